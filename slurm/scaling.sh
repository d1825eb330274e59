#!/bin/bash
# A scaling sweep in one folder: dataset scale, clip length T, DDP processes and synthetic world,
# each varied around a base point (smallest scale, T=8, one process), every point an ingest (if
# missing) -> train -> probe chain over several seeds, and a report at the end. The gate comes
# first: the base point is trained and probed before anything is scaled, and the scaled points
# run only when its probe gate passed.
#
#   slurm/scaling.sh SWEEP_DIR            submit everything to Slurm, chained with --dependency
#   slurm/scaling.sh --local SWEEP_DIR    run the same plan here, one step after another (make sweep)
#   slurm/scaling.sh --dry-run [--local] SWEEP_DIR   print the plan's job lines; submit or run nothing
#   --no-gate   run (submit) the scaled points whatever the base gate says; the report marks them
#   --quick     the tests' small local grid (seconds per point; not a result)
#
# The plan (which ingests, runs and probes, and what waits for what) is computed by slurm/plan.py:
# `python -m mvm.slurm.sweep_cli plan` prints one line per job (id, how, what it waits for, command;
# tab-separated), and this script only submits them (sbatch, recording job ids for the
# dependencies) or runs them in order. Planning writes sweep.env and runs/*/experiment.json.
#
# The gate: locally the base probe's exit 3 stops the sweep (the report is still written) and the
# script exits 3; on Slurm every scaled training job depends (afterok, --kill-on-invalid-dep) on the
# base probe job, which exits 3 (FAILED) on a failed gate, so they never run.
#
# The points (slurm/grid.py): dataset scale compute-matched (STEPS each, DATA_SEEDS seeds) and
# epoch-matched (steps in proportion to the data), T with the hidden horizon fixed
# (--mask-type future --future-steps FUTURE_STEPS), P processes at the same global batch and
# learning rate and at the same per-rank batch (THREADS intra-op threads in total), and the base
# point on a second synthetic world; AXIS_SEEDS seeds each. Dataset scale: the training split's
# scenes, shuffled with the sweep seed, are cut into chunks so that scale s uses the first
# s/max(scales) of them (16 / 32 / 64 scenes locally); each chunk is ingested once into its own
# shard folder and scale s trains on the comma list of its chunks' folders. Every probe of a world
# fits its heads on the smallest scale's chunk and scores on the same validation split, so probes
# differ only by encoder. --dry-run --local prints the plan's estimated time on 2 cores (stderr).
#
# SWEEP_DIR layout (read by mvm-report):
#   sweep.env                   the resolved settings below
#   scenes/train-K.txt          scene names of training chunk K
#   shards/T{T}/train-K/, val/  ingest outputs (manifest.json = complete)
#   runs/x{s}-T{T}-p{P}b{B}-n{steps}-s{seed}[-world{w}]/
#                               experiment.json (the axes), run/ (mvm-train), probe/ (mvm-probe)
#   logs/                       Slurm logs (Slurm mode); local-times.tsv (local: seconds per job)
#   report/                     mvm-report: scaling.json, scaling.md, *.png
#
# Settings (environment variables; Slurm-mode default / --local default):
#   MVM_SWEEP_DATAROOT   nuScenes dataroot        MVM_DATAROOT / SWEEP_DIR/nuscenes (mvm-synth makes it)
#   MVM_SWEEP_VERSION    nuScenes version         MVM_VERSION / v1.0-trainval
#   MVM_SWEEP_SPLITS     training and val splits  "train val"
#   MVM_SWEEP_SCALES     dataset scales           "1 2 4"
#   MVM_SWEEP_CLIP_LENS  T values                 "4 8 12" (mvm-ingest's default T halved, as is, x1.5)
#   MVM_SWEEP_FUTURE_STEPS hidden token steps     1 (every T hides its last 2 frames; 0 = the preset's mask)
#   MVM_SWEEP_PROCS      processes (GPUs)         "1 MVM_GPUS_PER_NODE" (0 = CPU nodes: "1 2") / "1 2"
#   MVM_SWEEP_THREADS    threads per point        - / 2 (1 process x 2, 2 processes x 1)
#   MVM_SWEEP_WORLDS     synthetic worlds         1 / 2 (local only)
#   MVM_SWEEP_MODEL      mvm-train preset         GATED_CONFIG's (slurm/settings.py: tiny); small, base
#   MVM_SWEEP_BATCH      clips per step, 1 process the preset's
#   MVM_SWEEP_STEPS      training steps           20000 / 1000
#   MVM_SWEEP_DDP_STEPS  steps of P > 1 points    STEPS / 200 (systems rows, not probed)
#   MVM_SWEEP_DATA_SEEDS seeds per data scale     3
#   MVM_SWEEP_AXIS_SEEDS seeds per other point    2
#   MVM_SWEEP_SYNTH_SCENES, _REPLICA_SCENES       - / 91 (64 train, 27 val), 23 (world 2: 16 train, 7 val)
#   MVM_SWEEP_SIZE       ingest frame size HxW    mvm-ingest's default (144x256) / the demo's 64x112
#   MVM_SWEEP_SEED       seed of chunks, ingests, first pre-training seed   0
#   MVM_SWEEP_TRAIN_ARGS extra mvm-train options  "" / "--log-every 10 --viz-every 1000"
#   MVM_SWEEP_PROBE_ARGS extra mvm-probe options  "" / "--controls none"
# Re-running on the same SWEEP_DIR continues: complete ingests and probed experiments are kept,
# unfinished runs resume from their checkpoints (--resume auto). New settings: a new SWEEP_DIR.
# Exit status: 0 when everything ran or was submitted, 3 when the base point's gate failed (local, or
# a re-run whose base was probed), 2 on usage errors, other non-zero on failures.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
mode=slurm
dry_run=""
plan_flags=()
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --local) mode=local ;;
    --dry-run) dry_run=1 ;;
    --no-gate | --quick) plan_flags+=("$1") ;;
    *) usage ;;
  esac
  shift
done
[[ $# -eq 1 && "$1" != -* ]] || usage
sweep="$(realpath -m "$1")"
log() { echo "scaling.sh: $*" >&2; }

plan_args=(--local)
if [[ "$mode" == local && -z "$dry_run" ]] && ! command -v mvm-train >/dev/null; then
  log "mvm-train is not on PATH: run 'make sweep', or put the repository's .venv/bin first on PATH"
  exit 1
fi
if [[ "$mode" == slurm ]]; then
  mvm_software_setup
  plan_args=(--gpus-per-node "$MVM_GPUS_PER_NODE")
fi
# The site's dataroot and version are the Slurm-mode defaults (site.env does not export them).
plan=$(MVM_DATAROOT="${MVM_DATAROOT:-}" MVM_VERSION="${MVM_VERSION:-}" \
  python -m mvm.slurm.sweep_cli plan "${plan_args[@]}" ${plan_flags[@]+"${plan_flags[@]}"} "$sweep") || exit $?
if [[ -n "$dry_run" ]]; then
  echo "$plan"
  exit 0
fi

declare -A slurm_job=()  # plan job id -> Slurm job id (only for submitted jobs)
# dependency AFTER: the sbatch --dependency option for a plan's AFTER field, or nothing.
dependency() {
  [[ "$1" == - ]] && return 0
  local kind="${1%%:*}" id ids=() plan_ids
  IFS=, read -ra plan_ids <<<"${1#*:}"
  for id in "${plan_ids[@]}"; do
    [[ -n "${slurm_job[$id]:-}" ]] && ids+=("${slurm_job[$id]}")
  done
  ((${#ids[@]} > 0)) || return 0
  echo "--dependency=$kind:$(IFS=:; echo "${ids[*]}")"
  # A job whose afterok can never hold (the base gate failed) is cancelled, not left pending forever.
  [[ "$kind" == afterok ]] && echo "--kill-on-invalid-dep=yes"
  return 0
}

gate_failed=""

# One job per line: ID, HOW, AFTER, then its command, tab-separated (slurm/plan.py). Read from
# descriptor 3 so that the jobs' own standard input is not the plan.
while IFS=$'\t' read -r -u 3 -a job; do
  id="${job[0]}" how="${job[1]}" after="${job[2]}" command=("${job[@]:3}")
  # After a failed gate only the report runs.
  [[ -n "$gate_failed" && "$id" != report ]] && continue
  case "$how" in
    run | probe | gate)
      log "$id"
      status=0
      started=$SECONDS
      "${command[@]}" || status=$?
      [[ "$mode" == local ]] && printf '%s\t%s\t%s\n' "$id" "$((SECONDS - started))" "$status" >>"$sweep/logs/local-times.tsv"
      # Exit 3 is a failed gate: a probe's is a result to report; the base point's stops the scaling.
      if [[ "$how" == gate && "$status" == 3 ]]; then
        log "$id: the base point's probe gate FAILED: no scaled point runs; writing the report, then exit 3" \
          "(its report.md says why; --no-gate runs the scaled points anyway, marked in the report)"
        gate_failed=1
      elif ((status != 0)) && ! [[ "$how" == probe && "$status" == 3 ]]; then
        log "$id failed (exit $status)"
        exit "$status"
      fi
      ;;
    ingest | cpu | gpu)
      submit=("${command[@]}")  # ingest: slurm/ingest.sh prints the job that finishes the ingest
      # shellcheck disable=SC2046  # dependency prints one word or nothing
      [[ "$how" == ingest ]] || submit=(mvm_submit "$how" $(dependency "$after") "${command[@]}")
      slurm_job[$id]=$("${submit[@]}") || { status=$?; log "$id: submission failed (exit $status)"; exit "$status"; }
      [[ "$how" == ingest ]] || log "$id: job ${slurm_job[$id]}"
      ;;
    *)
      log "unknown job kind '$how' in the plan (line: $id)"
      exit 1
      ;;
  esac
done 3<<<"$plan"

if [[ -n "$gate_failed" ]]; then
  log "stopped at the gate: $sweep/report/scaling.md"
  exit 3
elif [[ "$mode" == local ]]; then
  log "done: $sweep/report/scaling.md"
else
  log "report job ${slurm_job[report]} writes $sweep/report"
  echo "${slurm_job[report]}"
fi
