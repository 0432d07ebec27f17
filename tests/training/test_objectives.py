"""The terms' weights come from the config groups that declare one."""

from optical_jax.config import base_config
from optical_jax.training.objectives import OBJECTIVES, term_weight


def test_a_term_weighs_what_its_config_group_says_and_1_without_one():
  config = base_config()
  config.contrastive.weight, config.maxsim.weight = 0.25, 2.0
  assert term_weight(config, "contrastive") == 0.25
  assert term_weight(config, "maxsim") == 2.0
  assert term_weight(config, "ot") == 1.0  # a group without a weight field
  assert term_weight(config, "mse") == 1.0  # no group at all
  assert {name for terms in OBJECTIVES.values() for name in terms} == {
      "ot", "mse", "contrastive", "maxsim"}
