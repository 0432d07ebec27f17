"""The run's device mesh: one axis (`AXIS`) that the batch, and an evaluation's corpus, are
split over. Training and evaluation name the same axis, so an evaluation runs on the run's
mesh."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

AXIS = "data"


def data_mesh(devices=None) -> Mesh:
  """A one-axis mesh (`data`) over `devices`, all devices of all processes by default."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def local_mesh() -> Mesh:
  """A one-axis mesh over this process's devices: an evaluation's mesh outside a run."""
  return data_mesh(jax.local_devices())
