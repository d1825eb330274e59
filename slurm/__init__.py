"""The scaling sweep in Python: its settings, its plan, and `mvm-report`, next to the scripts that run it.

    slurm/settings.py        MVM_SWEEP_* variables -> SweepSettings (defaults from the ingest config)
    slurm/plan.py            SweepSettings -> the jobs (ingests, runs, probes, report) and their order
    slurm/sweep_cli.py       `python -m mvm.slurm.sweep_cli plan|scenes`: what slurm/scaling.sh calls
    slurm/report*.py         `mvm-report`: the sweep's runs and probes -> scaling.json, scaling.md, plots

The bash scripts beside them only submit (sbatch) or run (--local) the job lines the plan prints.
"""
