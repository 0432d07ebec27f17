"""JAX's persistent compilation cache, on when `config.runtime.compilation_cache` says so."""

from __future__ import annotations

import os

import ml_collections

from optical_jax.files.layout import CacheDir


def enable_compilation_cache(config: ml_collections.ConfigDict) -> None:
  """Keeps compiled XLA programs in `cache_dir/xla`, so a rerun, a resumed run or another run
  with the same shapes (the demo's evaluations) loads them instead of compiling again. A cache
  directory given in JAX's own `JAX_COMPILATION_CACHE_DIR` is kept (one cache for many runs:
  a test session)."""
  import jax
  if config.runtime.compilation_cache and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", str(CacheDir(config.runtime.cache_dir).xla))
    # Every program, however quick to compile: the evaluation's (one per batch width, ~0.5 s
    # each on 2 cores) add up to ~30 s of a demo run.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
