"""Benchmarks for the mvm pipeline against the alternatives a user would pick (`make bench`).

Entry point: `python -m bench.run [--quick] [--out bench/results.json]`. Each module measures one
thing (loader, ingest_speed, storage, training, cost_scaling) and returns a plain dict; `run`
puts them side by side, as ratios against a baseline, with the machine they ran on.
"""
