"""optical_jax: OPTICAL (optimal-transport distillation for cross-lingual retrieval) in JAX.

Submodules load lazily so that `import optical_jax.losses` stays free of transformers,
orbax and the training stack.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_encoder": "optical_jax.models.hf_checkpoint",
    "LoadedEncoder": "optical_jax.models.loaded",
    "CheckpointError": "optical_jax.models.loaded",
    "save_hf_checkpoint": "optical_jax.models.hf_checkpoint",
    "Encoder": "optical_jax.models.encoder",
    "EncoderConfig": "optical_jax.models.encoder",
}


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'optical_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
