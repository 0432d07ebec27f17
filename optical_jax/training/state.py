"""The train state, the trainable sub-tree of the parameters, and the optimizer."""

from __future__ import annotations

import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from optical_jax.config import ConfigError
from optical_jax.models.student import DistillationModels


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def trainable_subtree(params: dict, pattern: str) -> dict:
  """The parameters whose `/`-joined path (`encoder/layer_0/output_dense/kernel`) matches the
  regular expression `pattern` (anywhere in the path), as a nested dict; all for ''."""
  if not pattern:
    return params
  flat = flax.traverse_util.flatten_dict(params)
  selected = {k: v for k, v in flat.items() if re.search(pattern, "/".join(k))}
  if not selected:
    raise ConfigError(f"config.train.trainable {pattern!r} matches no parameter; paths look "
                      f"like {'/'.join(next(iter(flat)))}")
  return flax.traverse_util.unflatten_dict(selected)


def merge_trainable(params: dict, trainable: dict) -> dict:
  """`params` with the leaves of its sub-tree `trainable` replaced."""
  if trainable is params:
    return params
  flat = flax.traverse_util.flatten_dict(params)
  flat.update(flax.traverse_util.flatten_dict(trainable))
  return flax.traverse_util.unflatten_dict(flat)


def make_optimizer(config) -> optax.GradientTransformation:
  """Clipped AdamW with linear warm-up and cosine decay to `final_lr_fraction` of the peak;
  no weight decay on biases and LayerNorm parameters."""
  t = config.train
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate, warmup_steps=t.warmup_steps,
      decay_steps=max(t.num_train_steps, t.warmup_steps + 1),
      end_value=t.learning_rate * t.final_lr_fraction)

  def decay_mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(getattr(k, "key", "") in ("bias", "scale") for k in path), params)

  return optax.chain(optax.clip_by_global_norm(t.grad_clip_norm),
                     optax.adamw(schedule, weight_decay=t.weight_decay, mask=decay_mask))


def initial_state(models: DistillationModels, optimizer: optax.GradientTransformation, *,
                  trainable: str = "", seed: int = 0) -> TrainState:
  """Step 0; the optimizer state covers only the parameters matching `trainable`."""
  params = models.init_params(jax.random.PRNGKey(seed))
  return TrainState(step=jnp.array(0, jnp.int32), params=params,
                    opt_state=optimizer.init(trainable_subtree(params, trainable)))
