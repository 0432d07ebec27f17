"""Host helpers: copies of replicated arrays."""

import jax
import numpy as np

from optical_jax.runtime import host


def test_to_host_gives_numpy_copies():
  tree = {"a": jax.numpy.arange(3.0), "b": np.ones(2)}
  copy = host.to_host(tree)
  assert all(isinstance(v, np.ndarray) for v in copy.values())
  np.testing.assert_array_equal(copy["a"], [0.0, 1.0, 2.0])
