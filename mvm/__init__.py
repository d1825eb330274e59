"""mvm: masked video modeling on nuScenes CAM_FRONT, preprocess then stream.

One installed package. This folder is the ground floor every stage stands on (shard format and
readers, atomic writes, codec helpers, clip ego motion, seeded sampling, report formatting, the
temporal summary); the stages live in the repository's top-level folders and import as
`mvm.synth`, `mvm.ingest`, `mvm.train`, `mvm.probe` and `mvm.slurm` (pyproject.toml maps them).
Arrows run down only: synth/ingest/train/probe/slurm import the ground floor, probe imports train,
and nothing imports upwards.
"""
