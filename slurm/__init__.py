"""The scaling sweep in Python: its settings, its plan, and `mvm-report`, next to the scripts that run it.

    slurm/settings.py        MVM_SWEEP_* variables -> SweepSettings (defaults; GATED_CONFIG)
    slurm/grid.py            SweepSettings -> the points and their axes (gate first), the time estimate
    slurm/plan.py            the points -> the jobs (syntheses, ingests, runs, probes, gate, report), in order
    slurm/sweep_cli.py       `python -m mvm.slurm.sweep_cli plan|scenes|gate`: what slurm/scaling.sh calls
    slurm/probe_report.py    mvm-probe's report.json (one task or a section per task) -> scores, gate
    slurm/report*.py         `mvm-report`: the sweep's runs and probes -> scaling.json, scaling.md, plots

The bash scripts beside them only submit (sbatch) or run (--local) the job lines the plan prints.
"""
