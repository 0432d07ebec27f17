"""The encoder: its dense layer (Flax's parameters and numbers, a backward pass YNNPACK runs)
and its attention implementations."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optical_jax.models.encoder import Dense, Encoder, EncoderConfig, check_attention


@pytest.mark.parametrize("features, flax_layer", [
    (12, nn.Dense(12)),
    ((3, 4), nn.DenseGeneral((3, 4))),
])
def test_dense_has_flaxs_parameters_outputs_and_gradients(features, flax_layer):
  x = jax.random.normal(jax.random.PRNGKey(0), (10, 8))
  ours = Dense(features)
  params = ours.init(jax.random.PRNGKey(1), x)
  flax_params = flax_layer.init(jax.random.PRNGKey(1), x)
  # Same names, shapes and initial values: checkpoints and fresh inits map one to one.
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, flax_params)
  params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # a non-zero bias too

  np.testing.assert_allclose(ours.apply(params, x), flax_layer.apply(params, x), atol=1e-6)
  probe = jax.random.normal(jax.random.PRNGKey(2), (10, *np.atleast_1d(features)))
  loss = lambda layer: lambda p, x: jnp.sum(layer.apply(p, x) * probe)
  ours_grad = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, x)

  # float64 reference: y = x @ W + b, so dW = x.T @ g, dx = g @ W.T, db = sum(g).
  g = np.asarray(probe, np.float64).reshape(10, -1)
  w = np.asarray(params["params"]["kernel"], np.float64).reshape(8, -1)
  x64 = np.asarray(x, np.float64)
  (p_grad, x_grad) = ours_grad
  np.testing.assert_allclose(p_grad["params"]["kernel"].reshape(8, -1), x64.T @ g, atol=1e-5)
  np.testing.assert_allclose(p_grad["params"]["bias"].reshape(-1), g.sum(0), atol=1e-5)
  np.testing.assert_allclose(x_grad, g @ w.T, atol=1e-5)


@pytest.mark.slow
def test_dense_on_a_3d_input_matches_flax():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
  params = nn.Dense(6).init(jax.random.PRNGKey(1), x)
  loss = lambda layer: lambda p: jnp.sum(jnp.sin(layer.apply(p, x)))
  np.testing.assert_allclose(Dense(6).apply(params, x), nn.Dense(6).apply(params, x), atol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                         jax.grad(loss(Dense(6)))(params), jax.grad(loss(nn.Dense(6)))(params))


def test_dense_bfloat16_computes_in_bfloat16_with_float32_gradients():
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 8))
  layer = Dense(4, jnp.bfloat16)
  params = layer.init(jax.random.PRNGKey(1), x)
  assert layer.apply(params, x).dtype == jnp.bfloat16
  grads = jax.grad(lambda p: jnp.sum(layer.apply(p, x).astype(jnp.float32)))(params)
  assert grads["params"]["kernel"].dtype == jnp.float32
  np.testing.assert_allclose(grads["params"]["kernel"],
                             np.broadcast_to(np.asarray(x).sum(0)[:, None], (8, 4)), rtol=2e-2)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a property of XLA:CPU's program")
def test_cpu_backward_runs_every_matmul_through_ynnpack():
  x = jnp.ones((256, 64))
  layer = Dense(128)
  params = layer.init(jax.random.PRNGKey(0), x)
  forward = jax.jit(layer.apply).lower(params, x).compile().as_text()
  if "ynn_fusion" not in forward:
    pytest.skip("this jaxlib/CPU runs no dot through YNNPACK")
  backward = jax.jit(jax.grad(lambda p, x: jnp.sum(layer.apply(p, x) ** 2), argnums=(0, 1)))
  program = backward.lower(params, x).compile().as_text()
  entry = program[program.index("ENTRY"):]
  plain_dots = re.findall(r"= \S+ dot\(", entry)
  assert not plain_dots, f"dots left to Eigen in the backward: {len(plain_dots)}"
  # forward, input gradient, weight gradient (instructions, not mentions as operands)
  assert len(re.findall(r"%ynn_fusion[.0-9]* = ", entry)) >= 3


def _tiny_encoder_inputs():
  config = EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=32)
  ids = jnp.asarray(np.random.default_rng(0).integers(5, 50, (3, 8)), jnp.int32)
  mask = jnp.asarray(np.arange(8)[None, :] < np.array([[8], [5], [2]]), jnp.int32)
  return config, ids, mask


@pytest.mark.slow
def test_cudnn_attention_gets_a_mask_row_per_query_and_computes_the_same(monkeypatch):
  config, ids, mask = _tiny_encoder_inputs()
  params = Encoder(config).init(jax.random.PRNGKey(0), ids, mask)
  expected = Encoder(config, jnp.bfloat16, attention="xla").apply(params, ids, mask)
  real_attention, calls = jax.nn.dot_product_attention, []

  def cudnn_as_xla(q, k, v, *, mask, implementation):
    # What cuDNN's layout check requires of a mask turned bias: [batch, 1, queries, keys].
    calls.append((implementation, mask.shape))
    return real_attention(q, k, v, mask=mask, implementation="xla")

  monkeypatch.setattr(jax.nn, "dot_product_attention", cudnn_as_xla)
  got = Encoder(config, jnp.bfloat16, attention="cudnn").apply(params, ids, mask)
  assert calls == [("cudnn", (3, 1, 8, 8))] * config.num_hidden_layers
  np.testing.assert_allclose(got, expected, atol=1e-6)


def test_unknown_attention_is_named():
  config, ids, mask = _tiny_encoder_inputs()
  with pytest.raises(ValueError, match="attention must be one of .*got 'flash'"):
    Encoder(config, attention="flash").init(jax.random.PRNGKey(0), ids, mask)


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_cudnn_attention_off_gpus_is_named_by_the_devices_platform(platform):
  check_attention("cudnn", jnp.bfloat16, "gpu")
  check_attention("cudnn", jnp.bfloat16)  # tracing: the devices are not known yet
  with pytest.raises(ValueError, match=f"'cudnn' needs an NVIDIA GPU .* the devices are "
                                       f"'{platform}'"):
    check_attention("cudnn", jnp.bfloat16, platform)


def test_cudnn_attention_in_float32_is_named_while_tracing():
  config, ids, mask = _tiny_encoder_inputs()
  with pytest.raises(ValueError, match="'cudnn' needs .* a bfloat16 or float16 dtype"):
    Encoder(config, jnp.float32, attention="cudnn").init(jax.random.PRNGKey(0), ids, mask)
