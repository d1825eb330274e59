# Shared by slurm/*.sh and slurm/*.sbatch (sourced, not run): site settings, sbatch options, job setup.
#
# MVM_ROOT is the repository: set by the submit scripts and exported to their jobs; a job
# submitted by hand from the repository root finds it through SLURM_SUBMIT_DIR.

if [[ -z "${MVM_ROOT:-}" ]]; then
  MVM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fi
export MVM_ROOT
export MVM_SITE_ENV="${MVM_SITE_ENV:-$MVM_ROOT/slurm/site.env}"
if [[ ! -f "$MVM_SITE_ENV" ]]; then
  echo "mvm: site settings $MVM_SITE_ENV not found (set MVM_SITE_ENV or run from the repository)" >&2
  exit 2
fi
# shellcheck source=site.env
source "$MVM_SITE_ENV"

# mvm_sbatch_options KIND -> prints one sbatch option per line for KIND = cpu or gpu.
mvm_sbatch_options() {
  local partition="$MVM_PARTITION"
  [[ "$1" == gpu && -n "$MVM_GPU_PARTITION" ]] && partition="$MVM_GPU_PARTITION"
  [[ -n "$MVM_ACCOUNT" ]] && echo "--account=$MVM_ACCOUNT"
  [[ -n "$partition" ]] && echo "--partition=$partition"
  [[ -n "$MVM_QOS" ]] && echo "--qos=$MVM_QOS"
  local extra
  for extra in $MVM_SBATCH_EXTRA; do echo "$extra"; done
  return 0
}

# mvm_submit KIND SBATCH_ARGS... -> submits with the site options, prints the job id.
mvm_submit() {
  local kind="$1"
  shift
  local -a site_options
  mapfile -t site_options < <(mvm_sbatch_options "$kind")
  sbatch --parsable "${site_options[@]}" "$@" | cut -d';' -f1
}

# mvm_software_setup: modules, then a conda environment or a venv, as the site settings say.
mvm_software_setup() {
  if [[ -n "$MVM_MODULES" ]]; then
    module purge
    # shellcheck disable=SC2086
    module load $MVM_MODULES
  fi
  if [[ -n "$MVM_CONDA_ENV" ]]; then
    eval "$(conda shell.bash hook)"
    conda activate "$MVM_CONDA_ENV"
  elif [[ -n "$MVM_VENV" ]]; then
    # shellcheck disable=SC1091
    source "$MVM_VENV/bin/activate"
  fi
}

# mvm_job_setup: the software environment, then a header line for the job's log.
mvm_job_setup() {
  mvm_software_setup
  echo "mvm: job ${SLURM_JOB_ID:-local}${SLURM_ARRAY_TASK_ID:+ task $SLURM_ARRAY_TASK_ID} on $(hostname -s)" \
    "(restart ${SLURM_RESTART_COUNT:-0}) at $(date -Is)"
}
