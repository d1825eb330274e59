"""mvm-synth: a synthetic, schema-faithful nuScenes-format dataroot rendered from ego motion.

`generate(out, ...)` writes it (see ingest.synth.dataroot); `mvm-synth` is its command line.
"""

from ingest.synth.dataroot import DEFAULT_DROP_RATE, generate

__all__ = ["DEFAULT_DROP_RATE", "generate"]
