#!/bin/bash
# Submit a whole ingest in one go: an array of N parts, then finalize once all parts succeeded.
#
#   slurm/ingest.sh [--parts N] [--logs DIR] [--after JOBID] -- MVM_INGEST_ARGS...
#
# MVM_INGEST_ARGS are mvm-ingest's options without --part/--finalize, e.g.
#   slurm/ingest.sh -- --dataroot /data/nuscenes --version v1.0-trainval --scenes train --out /scratch/shards/train
# --parts N   array tasks (default MVM_INGEST_PARTS from the site settings)
# --logs DIR  Slurm log folder (default: the --out folder's parent /logs)
# --after ID  start only after job ID succeeded
# Prints the finalize job id on stdout (chain later jobs with --dependency=afterok:ID); exit 2 on usage errors.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
parts="$MVM_INGEST_PARTS"
logs=""
after=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --parts) parts="$2"; shift 2 ;;
    --logs) logs="$2"; shift 2 ;;
    --after) after="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "ingest.sh: unknown option $1" >&2; usage ;;
  esac
done
[[ $# -gt 0 && "$parts" =~ ^[1-9][0-9]*$ ]] || usage
ingest_args=("$@")
out=""
for ((i = 0; i < ${#ingest_args[@]}; i++)); do
  case "${ingest_args[$i]}" in
    --out) out="${ingest_args[$((i + 1))]:-}" ;;
    --out=*) out="${ingest_args[$i]#--out=}" ;;
    --part | --part=* | --finalize) usage ;;
  esac
done
[[ -n "$out" ]] || { echo "ingest.sh: mvm-ingest arguments need --out DIR" >&2; exit 2; }
logs="${logs:-$(dirname "$out")/logs}"
mkdir -p "$logs"
name="ingest-$(basename "$out")"

dependency=()
[[ -n "$after" ]] && dependency=("--dependency=afterok:$after")
array_id=$(mvm_submit cpu "${dependency[@]}" --job-name="$name" --array="0-$((parts - 1))" \
  --output="$logs/$name-%A_%a.out" "$MVM_ROOT/slurm/ingest_array.sbatch" "${ingest_args[@]}")
finalize_id=$(mvm_submit cpu --dependency="afterok:$array_id" --job-name="$name-finalize" \
  --output="$logs/$name-finalize-%j.out" "$MVM_ROOT/slurm/ingest_finalize.sbatch" "${ingest_args[@]}")
echo "ingest.sh: $out: array job $array_id ($parts parts), finalize job $finalize_id" >&2
echo "$finalize_id"
