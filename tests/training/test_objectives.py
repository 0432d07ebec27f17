"""The terms' weights come from the config groups that declare one; which losses a
microbatch split leaves unchanged."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optical_jax.config import (LOSSES, PER_EXAMPLE_LOSSES, ConfigError, base_config,
                                loss_terms, validate)
from optical_jax.runtime.mesh import AXIS
from optical_jax.training.objectives import TERMS, distillation_loss, term_weight


def test_a_term_weighs_what_its_config_group_says_and_1_without_one():
  config = base_config()
  config.contrastive.weight, config.maxsim.weight = 0.25, 2.0
  assert term_weight(config, "contrastive") == 0.25
  assert term_weight(config, "maxsim") == 2.0
  assert term_weight(config, "ot") == 1.0  # a group without a weight field
  assert term_weight(config, "mse") == 1.0  # no group at all
  assert {name for loss in LOSSES for name in loss_terms(loss)} == set(TERMS) == {
      "ot", "mse", "contrastive", "maxsim"}


@pytest.mark.slow
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("center", [False, True])
def test_validate_lets_microbatches_split_a_batch_only_where_no_pair_s_loss_changes(loss, center):
  """`config.validate` allows `train.microbatch_size` exactly where each pair's loss is the
  same in either half of its batch as in the whole: not with in-batch negatives, nor with OT
  centred on the batch's mean teacher token."""
  config = base_config()
  config.loss, config.ot.center = loss, center
  config.train.batch_size, config.train.microbatch_size = 8, 4
  try:
    validate(config, devices=1, backend="cpu")
    allowed = True
  except ConfigError:
    allowed = False
  models = SimpleNamespace(student=SimpleNamespace(pooling="mean"),
                           teacher=SimpleNamespace(pooling="mean"),
                           student_special_ids=(), teacher_special_ids=())
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  batch = [{"tokens": jax.random.normal(key, (8, length, 16)), "mask": jnp.ones((8, length)),
            "ids": jnp.ones((8, length), jnp.int32) + 5} for key, length in zip(keys, (6, 7))]
  # One device: the objectives' collectives over the mesh axis, here a vmapped axis of size 1.
  per_pair = jax.vmap(lambda s, t: distillation_loss(config, models, s, t)[0], axis_name=AXIS)
  loss_of = lambda part: per_pair(*jax.tree_util.tree_map(lambda x: x[None, part], batch))[0]
  split = jnp.concatenate([loss_of(slice(0, 4)), loss_of(slice(4, 8))])
  assert np.allclose(loss_of(slice(0, 8)), split, rtol=1e-5, atol=1e-6) == allowed
  assert allowed == (loss in PER_EXAMPLE_LOSSES and not (center and loss == "ot"))  # some are
