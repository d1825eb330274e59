"""mvm-synth: a synthetic, schema-faithful nuScenes-format dataroot rendered from ego motion.

`generate(out, ...)` writes it (see mvm.synth.dataroot); `mvm-synth` is its command line.
"""

from mvm.synth.dataroot import DEFAULT_DROP_RATE, generate

__all__ = ["DEFAULT_DROP_RATE", "generate"]
