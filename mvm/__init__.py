"""mvm: masked video modeling on nuScenes CAM_FRONT, preprocess then stream.

One installed package. This folder is the ground floor every stage stands on (shard format and
readers, atomic writes and locks, codec helpers and the NVDEC decoder, clip ego motion, seeded
sampling, option declarations, report formatting, the probe's feature path, decoded clips to
tensors); the stages live in the repository's top-level folders and import as
`mvm.synth`, `mvm.ingest`, `mvm.train`, `mvm.probe` and `mvm.slurm` (pyproject.toml maps them).
Arrows run down only: the stages import the ground floor, probe may import train, slurm may import
any stage, and nothing imports upwards (tests/test_layout.py checks it).
"""
