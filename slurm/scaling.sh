#!/bin/bash
# A scaling sweep in one folder: dataset scale, clip length T and world size, each varied around a
# base point (largest scale, T=8, one process), every experiment an ingest (if missing) -> train
# -> probe chain, and a report at the end.
#
#   slurm/scaling.sh SWEEP_DIR            submit everything to Slurm, chained with --dependency
#   slurm/scaling.sh --local SWEEP_DIR    run the same plan here, one step after another (make sweep)
#   slurm/scaling.sh --dry-run [--local] SWEEP_DIR   print the plan's job lines; submit or run nothing
#
# The plan (which ingests, runs and probes, and what waits for what) is computed by slurm/plan.py:
# `python -m mvm.slurm.sweep_cli plan` prints one line per job (id, how, what it waits for, command;
# tab-separated), and this script only submits them (sbatch, recording job ids for the
# dependencies) or runs them in order. Planning writes sweep.env and runs/*/experiment.json.
#
# Dataset scale: the training split's scenes, shuffled with the sweep seed, are cut into chunks
# so that scale s uses the first s/max(scales) of them (x1 = a quarter, x2 = half, x4 = all by
# default); each chunk is ingested once into its own shard folder and scale s trains on the
# comma list of its chunks' folders ("more shards"). Every probe fits its heads on the largest
# scale's training shards and scores on the validation split, so probes differ only by encoder.
# World size: per-rank batch fixed (global batch grows with the world), steps fixed.
#
# SWEEP_DIR layout (read by mvm-report):
#   sweep.env                   the resolved settings below
#   scenes/train-K.txt          scene names of training chunk K
#   shards/T{T}/train-K/, val/  ingest outputs (manifest.json = complete)
#   runs/x{s}-T{T}-w{w}/        experiment.json (the axes), run/ (mvm-train), probe/ (mvm-probe)
#   logs/                       Slurm logs (Slurm mode)
#   report/                     mvm-report: scaling.json, scaling.md, *.png
#
# Settings (environment variables; Slurm-mode default / --local default):
#   MVM_SWEEP_DATAROOT   nuScenes dataroot        MVM_DATAROOT / SWEEP_DIR/nuscenes (mvm-synth makes it)
#   MVM_SWEEP_VERSION    nuScenes version         MVM_VERSION / v1.0-trainval
#   MVM_SWEEP_SPLITS     training and val splits  "train val"
#   MVM_SWEEP_SCALES     dataset scales           "1 2 4"
#   MVM_SWEEP_CLIP_LENS  T values                 "4 8 12" / "4 8" (mvm-ingest's default T halved, as is, x1.5)
#   MVM_SWEEP_WORLDS     processes (GPUs)         "1 MVM_GPUS_PER_NODE" (0 = CPU nodes: "1 2") / "1 2"
#   MVM_SWEEP_MODEL      mvm-train preset         small / tiny
#   MVM_SWEEP_STEPS      training steps           20000 / 150
#   MVM_SWEEP_SIZE       ingest frame size HxW    mvm-ingest's default (144x256) / the demo's 64x112
#   MVM_SWEEP_SEED       seed of chunks and runs  0
#   MVM_SWEEP_TRAIN_ARGS extra mvm-train options  "" / "--log-every 10 --viz-every 1000"
#   MVM_SWEEP_PROBE_ARGS extra mvm-probe options  ""
# Re-running on the same SWEEP_DIR continues: complete ingests and probed experiments are kept,
# unfinished runs resume from their checkpoints (--resume auto). New settings: a new SWEEP_DIR.
# Exit status: 0 when everything ran or was submitted, 2 on usage errors, other non-zero on failures.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
mode=slurm
dry_run=""
while [[ "${1:-}" == --local || "${1:-}" == --dry-run ]]; do
  [[ "$1" == --local ]] && mode=local || dry_run=1
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
  python -m mvm.slurm.sweep_cli plan "${plan_args[@]}" "$sweep") || exit $?
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
  ((${#ids[@]} > 0)) && echo "--dependency=$kind:$(IFS=:; echo "${ids[*]}")"
  return 0
}

# One job per line: ID, HOW, AFTER, then its command, tab-separated (slurm/plan.py). Read from
# descriptor 3 so that the jobs' own standard input is not the plan.
while IFS=$'\t' read -r -u 3 -a job; do
  id="${job[0]}" how="${job[1]}" after="${job[2]}" command=("${job[@]:3}")
  case "$how" in
    run | gate)
      log "$id"
      status=0
      "${command[@]}" || status=$?
      # A gate job's exit 3 is a failed gate: a result to report, not a broken sweep.
      if ((status != 0)) && ! [[ "$how" == gate && "$status" == 3 ]]; then
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

if [[ "$mode" == local ]]; then
  log "done: $sweep/report/scaling.md"
else
  log "report job ${slurm_job[report]} writes $sweep/report"
  echo "${slurm_job[report]}"
fi
