"""This process's view of a run of one or several processes: whether it speaks for the run,
and host copies of replicated arrays."""

from __future__ import annotations


def is_primary() -> bool:
  """Whether this is process 0, the one that writes files and shows progress."""
  import jax
  return jax.process_index() == 0


def to_host(tree):
  """A replicated (or fully addressable) tree of arrays as numpy arrays, on any process: each
  device array's first local copy read through `jax.device_get`, an explicit transfer (which
  the train step's transfer guard allows); other leaves as numpy arrays."""
  import jax
  import numpy as np
  return jax.tree_util.tree_map(
      lambda x: np.asarray(jax.device_get(x.addressable_data(0)) if isinstance(x, jax.Array)
                           else x), tree)
