#!/bin/bash
# A scaling sweep in one folder: dataset scale, clip length T and world size, each varied around a
# base point (largest scale, T=8, one process), every experiment an ingest (if missing) -> train
# -> probe chain, and a report at the end.
#
#   slurm/scaling.sh SWEEP_DIR            submit everything to Slurm, chained with --dependency
#   slurm/scaling.sh --local SWEEP_DIR    run the same plan here, one step after another (make sweep)
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
#   MVM_SWEEP_CLIP_LENS  T values                 "4 8 12" / "4 8"
#   MVM_SWEEP_WORLDS     processes (GPUs)         "1 MVM_GPUS_PER_NODE" (0 = CPU nodes: "1 2") / "1 2"
#   MVM_SWEEP_MODEL      mvm-train preset         small / tiny
#   MVM_SWEEP_STEPS      training steps           20000 / 150
#   MVM_SWEEP_SIZE       ingest frame size HxW    144x256 / 64x112
#   MVM_SWEEP_SEED       seed of chunks and runs  0
#   MVM_SWEEP_TRAIN_ARGS extra mvm-train options  "" / "--log-every 10 --viz-every 1000"
#   MVM_SWEEP_PROBE_ARGS extra mvm-probe options  ""
# Re-running on the same SWEEP_DIR continues: complete ingests and probed experiments are kept,
# unfinished runs resume from their checkpoints (--resume auto). New settings: a new SWEEP_DIR.
# Exit status: 0 when everything ran or was submitted, 2 on usage errors, other non-zero on failures.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() { sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
mode=slurm
if [[ "${1:-}" == --local ]]; then
  mode=local
  shift
fi
[[ $# -eq 1 && "$1" != -* ]] || usage
sweep="$(realpath -m "$1")"

if [[ "$mode" == local ]]; then
  dataroot="${MVM_SWEEP_DATAROOT:-$sweep/nuscenes}"
  version="${MVM_SWEEP_VERSION:-v1.0-trainval}"
  clip_lens="${MVM_SWEEP_CLIP_LENS:-4 8}"
  worlds="${MVM_SWEEP_WORLDS:-1 2}"
  model="${MVM_SWEEP_MODEL:-tiny}"
  steps="${MVM_SWEEP_STEPS:-150}"
  size="${MVM_SWEEP_SIZE:-64x112}"
  train_args="${MVM_SWEEP_TRAIN_ARGS:---log-every 10 --viz-every 1000}"
else
  dataroot="${MVM_SWEEP_DATAROOT:-$MVM_DATAROOT}"
  version="${MVM_SWEEP_VERSION:-$MVM_VERSION}"
  clip_lens="${MVM_SWEEP_CLIP_LENS:-4 8 12}"
  worlds="${MVM_SWEEP_WORLDS:-1 $((MVM_GPUS_PER_NODE > 1 ? MVM_GPUS_PER_NODE : 2))}"
  model="${MVM_SWEEP_MODEL:-small}"
  steps="${MVM_SWEEP_STEPS:-20000}"
  size="${MVM_SWEEP_SIZE:-144x256}"
  train_args="${MVM_SWEEP_TRAIN_ARGS:-}"
  mvm_software_setup
fi
read -r train_split val_split <<<"${MVM_SWEEP_SPLITS:-train val}"
scales="${MVM_SWEEP_SCALES:-1 2 4}"
seed="${MVM_SWEEP_SEED:-0}"
probe_args="${MVM_SWEEP_PROBE_ARGS:-}"
read -ra scale_list <<<"$scales"
read -ra clip_len_list <<<"$clip_lens"
read -ra world_list <<<"$worlds"
max_scale="${scale_list[-1]}"
base_clip_len=8
[[ " $clip_lens " == *" 8 "* ]] || base_clip_len="${clip_len_list[0]}"

mkdir -p "$sweep"/{scenes,shards,runs,logs}
cat >"$sweep/sweep.env" <<EOF
mode=$mode
dataroot=$dataroot
version=$version
splits="$train_split $val_split"
scales="$scales"
clip_lens="$clip_lens"
worlds="$worlds"
model=$model
steps=$steps
size=$size
seed=$seed
train_args="$train_args"
probe_args="$probe_args"
EOF

log() { echo "scaling.sh: $*" >&2; }

if [[ "$mode" == local && ! -f "$dataroot/$version/scene.json" ]]; then
  log "synthesizing a dataroot in $dataroot"
  mvm-synth --out "$dataroot" --version "$version" --scenes 16 --frames-per-scene 160 --width 480
fi

# Training chunks: chunk K holds the scenes that scale scale_list[K] adds to the previous one.
python - "$dataroot" "$version" "$train_split" "$seed" "$sweep/scenes" "${scale_list[@]}" <<'EOF'
import json, random, sys
from pathlib import Path
from ingest.scenes import resolve_scenes
dataroot, version, split, seed, out, *scales = sys.argv[1:]
available = [scene["name"] for scene in json.loads((Path(dataroot) / version / "scene.json").read_text())]
names = resolve_scenes(split, available).names
random.Random(f"mvm-sweep-{seed}").shuffle(names)
scales = [float(s) for s in scales]
bounds = [0] + [round(len(names) * s / scales[-1]) for s in scales]
if len(set(bounds)) != len(bounds):
    sys.exit(f"{len(names)} {split} scenes are too few for dataset scales {scales}")
for index, (start, stop) in enumerate(zip(bounds, bounds[1:])):
    (Path(out) / f"train-{index}.txt").write_text("".join(name + "\n" for name in names[start:stop]))
EOF

declare -A ingest_job=()
# ingest OUT SCENES T: make sure OUT holds an ingest of SCENES at clip length T; sets $job
# (the Slurm job that finishes it; empty when it is already complete or when running locally).
ingest() {
  local out="$1" scenes="$2" clip_len="$3"
  job=""
  [[ -f "$out/manifest.json" ]] && return 0
  local args=(--dataroot "$dataroot" --version "$version" --scenes "$scenes" --clip-len "$clip_len"
    --size "$size" --seed "$seed" --out "$out")
  if [[ "$mode" == local ]]; then
    log "ingest $out"
    mvm-ingest "${args[@]}"
  elif [[ -n "${ingest_job[$out]:-}" ]]; then
    job="${ingest_job[$out]}"
  else
    job=$(bash "$MVM_ROOT/slurm/ingest.sh" --logs "$sweep/logs" -- "${args[@]}")
    ingest_job[$out]="$job"
  fi
}

# afterok JOB...: a --dependency option for the non-empty job ids, or nothing.
afterok() {
  local ids
  ids=$(printf '%s\n' "$@" | sed '/^$/d' | paste -sd:)
  [[ -n "$ids" ]] && echo "--dependency=afterok:$ids"
  return 0
}

probe_jobs=()
# experiment SCALE T WORLD: train and probe one point of the sweep.
experiment() {
  local scale="$1" clip_len="$2" world="$3"
  local name="x$scale-T$clip_len-w$world"
  local dir="$sweep/runs/$name" shards="$sweep/shards/T$clip_len"
  if [[ -f "$dir/probe/report.json" ]]; then
    log "$name: already probed, kept"
    return 0
  fi
  mkdir -p "$dir"
  local train_folders=() all_folders=() train_waits=() probe_waits=() index
  for index in "${!scale_list[@]}"; do
    ingest "$shards/train-$index" "@$sweep/scenes/train-$index.txt" "$clip_len"
    probe_waits+=("$job")
    all_folders+=("$shards/train-$index")
    if ((${scale_list[$index]} <= scale)); then
      train_folders+=("$shards/train-$index")
      train_waits+=("$job")
    fi
  done
  ingest "$shards/val" "$val_split" "$clip_len"
  probe_waits+=("$job")
  local train_spec probe_spec
  train_spec=$(IFS=,; echo "${train_folders[*]}")
  probe_spec=$(IFS=,; echo "${all_folders[*]}")
  cat >"$dir/experiment.json" <<EOF
{"name": "$name", "data_scale": $scale, "clip_len": $clip_len, "world_size": $world,
 "model": "$model", "steps": $steps, "train_shards": "$train_spec",
 "probe_train_shards": "$probe_spec", "val_shards": "$shards/val"}
EOF
  # shellcheck disable=SC2206
  local train=(--shards "$train_spec" --out "$dir/run" --model "$model" --steps "$steps" --seed "$seed" $train_args)
  # shellcheck disable=SC2206
  local probe=(--checkpoint "$dir/run" --train-shards "$probe_spec" --val-shards "$shards/val"
    --out "$dir/probe" $probe_args)
  if [[ "$mode" == local ]]; then
    log "train $name"
    if ((world == 1)); then
      mvm-train "${train[@]}" --resume auto
    else
      OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node="$world" "$(command -v mvm-train)" \
        "${train[@]}" --resume auto
    fi
    log "probe $name"
    # Exit 3 is a failed gate: a result to report, not a broken sweep.
    mvm-probe "${probe[@]}" || (($? == 3))
    return 0
  fi
  local resources train_job
  if ((MVM_GPUS_PER_NODE > 0)); then
    local per_node=$((world < MVM_GPUS_PER_NODE ? world : MVM_GPUS_PER_NODE))
    resources=(--nodes=$(((world + per_node - 1) / per_node)) --gpus-per-node="$per_node")
  else  # CPU nodes: one gloo process per task, all on one node
    resources=(--nodes=1 --ntasks-per-node="$world" --gpus-per-node=0)
  fi
  train_job=$(mvm_submit gpu $(afterok "${train_waits[@]}") --job-name="train-$name" "${resources[@]}" \
    --output="$sweep/logs/train-$name-%j.out" "$MVM_ROOT/slurm/train_ddp.sbatch" "${train[@]}")
  probe_jobs+=("$(mvm_submit cpu $(afterok "$train_job" "${probe_waits[@]}") --job-name="probe-$name" \
    --output="$sweep/logs/probe-$name-%j.out" "$MVM_ROOT/slurm/probe.sbatch" "${probe[@]}")")
  log "$name: train job $train_job, probe job ${probe_jobs[-1]}"
}

# The plan: each axis varied around the base point (largest scale, base T, one process).
declare -A planned=()
plan() {
  [[ -n "${planned[$1-$2-$3]:-}" ]] && return 0
  planned[$1-$2-$3]=1
  experiment "$1" "$2" "$3"
}
for scale in "${scale_list[@]}"; do plan "$scale" "$base_clip_len" 1; done
for clip_len in "${clip_len_list[@]}"; do plan "$max_scale" "$clip_len" 1; done
for world in "${world_list[@]}"; do plan "$max_scale" "$base_clip_len" "$world"; done

if [[ "$mode" == local ]]; then
  mvm-report "$sweep" --out "$sweep/report"
  log "done: $sweep/report/scaling.md"
else
  report_after=()  # empty when every experiment was already probed
  ((${#probe_jobs[@]} > 0)) && report_after=("--dependency=afterany:$(IFS=:; echo "${probe_jobs[*]}")")
  report_job=$(mvm_submit cpu "${report_after[@]}" --job-name=report \
    --output="$sweep/logs/report-%j.out" "$MVM_ROOT/slurm/report.sbatch" "$sweep" --out "$sweep/report")
  log "submitted ${#planned[@]} experiments; report job $report_job writes $sweep/report"
  echo "$report_job"
fi
