"""This process's view of a run of one or several processes: whether it speaks for the run,
and host copies of replicated arrays."""

from __future__ import annotations


def is_primary() -> bool:
  """Whether this is process 0, the one that writes files and shows progress."""
  import jax
  return jax.process_index() == 0


def to_host(tree):
  """A replicated (or fully addressable) tree of arrays as numpy arrays, on any process."""
  import jax
  import numpy as np
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x), tree)
