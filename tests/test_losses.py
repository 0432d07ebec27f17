"""optical_jax.losses against independent float64 numpy references."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from optical_jax.losses import (contrastive_distillation_loss, maxsim_contrastive_loss,
                                mse_distillation_loss, ot_distillation_loss, token_cost_matrix,
                                weighted_sum)

TIGHT = dict(threshold=1e-5, max_iterations=5000)


def numpy_sinkhorn(cost, a, b, epsilon, iterations=20000):
  """Log-domain Sinkhorn in float64: plan with marginals a (rows) and b (columns)."""
  f, g = np.zeros(len(a)), np.zeros(len(b))
  plan_of = lambda f, g: a[:, None] * b[None, :] * np.exp((f[:, None] + g[None, :] - cost) / epsilon)
  for _ in range(iterations):
    f = -epsilon * logsumexp(np.log(b)[None, :] + (g[None, :] - cost) / epsilon, axis=1)
    g = -epsilon * logsumexp(np.log(a)[:, None] + (f[:, None] - cost) / epsilon, axis=0)
    if np.abs(plan_of(f, g).sum(1) - a).sum() < 1e-13:
      break
  plan = plan_of(f, g)
  return plan, f @ a + g @ b  # plan, entropic OT cost (dual objective)


def numpy_cosine_cost(s, t):
  s = s / np.linalg.norm(s, axis=-1, keepdims=True)
  t = t / np.linalg.norm(t, axis=-1, keepdims=True)
  return 1.0 - s @ t.T


def random_batch(seed=0, ls=(6, 3, 1, 5), lt=(9, 2, 7, 4), width_s=7, width_t=10, dim=8):
  rng = np.random.default_rng(seed)
  batch = len(ls)
  s = rng.normal(size=(batch, width_s, dim)).astype(np.float32)
  t = rng.normal(size=(batch, width_t, dim)).astype(np.float32)
  sm = np.arange(width_s)[None] < np.array(ls)[:, None]
  tm = np.arange(width_t)[None] < np.array(lt)[:, None]
  return s, t, sm, tm


@pytest.mark.slow
@pytest.mark.parametrize("epsilon", [0.05, 0.2])
def test_plan_and_loss_match_float64_numpy_sinkhorn(epsilon):
  s, t, sm, tm = random_batch()
  loss, diag = ot_distillation_loss(s, t, sm, tm, epsilon=epsilon, return_diagnostics=True,
                                    **TIGHT)
  assert bool(jnp.all(diag.converged))
  for k in range(len(s)):
    ss, tt = s[k][sm[k]].astype(np.float64), t[k][tm[k]].astype(np.float64)
    a, b = np.full(len(ss), 1 / len(ss)), np.full(len(tt), 1 / len(tt))
    cost = numpy_cosine_cost(ss, tt)
    plan, _ = numpy_sinkhorn(cost, a, b, epsilon)
    ours = np.asarray(diag.plan[k])
    np.testing.assert_allclose(ours[: len(ss), : len(tt)], plan, atol=1e-4)
    assert np.all(ours[len(ss):] == 0) and np.all(ours[:, len(tt):] == 0)
    assert abs(float(loss[k]) - np.sum(plan * cost)) < 1e-4


@pytest.mark.slow
def test_token_weights_and_sqeuclidean_match_numpy():
  s, t, sm, tm = random_batch(seed=1, ls=(4,), lt=(6,), width_s=4, width_t=6)
  rng = np.random.default_rng(2)
  ws, wt = rng.uniform(0.1, 2, (1, 4)), rng.uniform(0.1, 2, (1, 6))
  loss, diag = ot_distillation_loss(s, t, sm, tm, student_weights=ws, teacher_weights=wt,
                                    cost="sqeuclidean", epsilon=1.0, return_diagnostics=True,
                                    **TIGHT)
  cost = ((s[0][:, None, :].astype(np.float64) - t[0][None]) ** 2).sum(-1)
  plan, _ = numpy_sinkhorn(cost, ws[0] / ws.sum(), wt[0] / wt.sum(), 1.0)
  np.testing.assert_allclose(np.asarray(diag.plan[0]), plan, atol=1e-4)
  np.testing.assert_allclose(float(loss[0]), np.sum(plan * cost), rtol=1e-4)


@pytest.mark.slow
def test_padding_invariance():
  s, t, sm, tm = random_batch()
  rng = np.random.default_rng(5)
  s_padded = np.concatenate([s, rng.normal(size=(4, 5, 8)).astype(np.float32) * 100], axis=1)
  t_padded = np.concatenate([t, rng.normal(size=(4, 3, 8)).astype(np.float32)], axis=1)
  sm_padded = np.concatenate([sm, np.zeros((4, 5), bool)], axis=1)
  tm_padded = np.concatenate([tm, np.zeros((4, 3), bool)], axis=1)
  np.testing.assert_allclose(ot_distillation_loss(s_padded, t_padded, sm_padded, tm_padded),
                             ot_distillation_loss(s, t, sm, tm), atol=1e-6)


@pytest.mark.slow
def test_permutation_equivariance():
  s, t, _, _ = random_batch(ls=(7,), lt=(10,))
  perm = np.random.default_rng(3).permutation(7)
  loss, diag = ot_distillation_loss(s, t, return_diagnostics=True, **TIGHT)
  loss_p, diag_p = ot_distillation_loss(s[:, perm], t, return_diagnostics=True, **TIGHT)
  np.testing.assert_allclose(loss_p, loss, atol=1e-6)
  np.testing.assert_allclose(diag_p.plan[0], diag.plan[0][perm], atol=1e-6)


def _directional_fd(fn, x, direction, h=1e-4):
  return (fn(x + h * direction) - fn(x - h * direction)) / (2 * h)


@pytest.mark.slow
def test_stop_gradient_is_the_gradient_of_the_entropic_ot_cost():
  s, t, _, _ = random_batch(seed=4, ls=(5,), lt=(6,), width_s=5, width_t=6)
  eps = 0.1
  grad = jax.grad(lambda x: ot_distillation_loss(x, t, epsilon=eps, **TIGHT).sum())(s)
  direction = np.random.default_rng(0).normal(size=s.shape)
  uniform = lambda n: np.full(n, 1 / n)

  def entropic_cost(x):
    return numpy_sinkhorn(numpy_cosine_cost(x[0], t[0].astype(np.float64)), uniform(5),
                          uniform(6), eps, iterations=3000)[1]

  expected = _directional_fd(entropic_cost, s.astype(np.float64), direction)
  np.testing.assert_allclose(np.sum(np.asarray(grad) * direction), expected, rtol=2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["implicit", "unroll"])
def test_differentiated_plan_gradient_matches_finite_differences(mode):
  s, t, _, _ = random_batch(seed=6, ls=(4,), lt=(5,), width_s=4, width_t=5)
  eps = 0.2
  grad = jax.grad(lambda x: ot_distillation_loss(x, t, epsilon=eps, gradient=mode,
                                                 **TIGHT).sum())(s)
  direction = np.random.default_rng(1).normal(size=s.shape)
  uniform = lambda n: np.full(n, 1 / n)

  def transport_cost(x):
    cost = numpy_cosine_cost(x[0], t[0].astype(np.float64))
    return np.sum(numpy_sinkhorn(cost, uniform(4), uniform(5), eps, iterations=3000)[0] * cost)

  expected = _directional_fd(transport_cost, s.astype(np.float64), direction)
  np.testing.assert_allclose(np.sum(np.asarray(grad) * direction), expected, rtol=5e-3)


@pytest.mark.slow
def test_jit_vmap_grad_compose():
  s, t, sm, tm = random_batch()
  loss_fn = lambda s, t, sm, tm: ot_distillation_loss(s, t, sm, tm).sum()
  stacked = lambda x: jnp.stack([x, x])
  batched = jax.jit(jax.vmap(jax.value_and_grad(loss_fn)))(
      stacked(s), stacked(t), stacked(sm), stacked(tm))
  value, grad = jax.value_and_grad(loss_fn)(s, t, sm, tm)
  np.testing.assert_allclose(batched[0], [value, value], rtol=1e-5)
  np.testing.assert_allclose(batched[1][1], grad, atol=1e-5)
  assert np.all(np.asarray(grad)[~sm] == 0), "padded tokens get no gradient"


@pytest.mark.slow
@pytest.mark.parametrize("mode,epsilon", [
    *[(mode, eps) for mode in ("stop_gradient", "unroll") for eps in (1e-3, 1e-2, 1e-1, 1.0)],
    # Implicit differentiation needs a converged plan (documented): it is at these.
    ("implicit", 1e-1), ("implicit", 1.0)])
def test_finite_for_all_epsilons_with_padded_tails_and_empty_rows(mode, epsilon):
  s, t, sm, tm = random_batch(ls=(6, 1, 0, 5), lt=(9, 1, 7, 0))
  loss, grad = jax.value_and_grad(
      lambda x: ot_distillation_loss(x, t, sm, tm, epsilon=epsilon, gradient=mode,
                                     max_iterations=50).sum())(s)
  per_pair = ot_distillation_loss(s, t, sm, tm, epsilon=epsilon, gradient=mode,
                                  max_iterations=50)
  assert np.isfinite(float(loss)) and bool(jnp.all(jnp.isfinite(grad)))
  assert float(per_pair[2]) == 0.0 and float(per_pair[3]) == 0.0
  assert 0.0 <= float(per_pair[0]) <= 2.0


def test_bad_inputs_name_the_argument():
  s, t, sm, tm = random_batch()
  with pytest.raises(ValueError, match="student_tokens must have rank 3"):
    ot_distillation_loss(s[0], t)
  with pytest.raises(ValueError, match="teacher_mask must have shape"):
    ot_distillation_loss(s, t, sm, tm[:, :3])
  with pytest.raises(ValueError, match="teacher_tokens has dim"):
    ot_distillation_loss(s, t[..., :4])
  with pytest.raises(ValueError, match="student_tokens must be a floating-point"):
    ot_distillation_loss(s.astype(np.int32), t)
  with pytest.raises(ValueError, match="gradient must be"):
    ot_distillation_loss(s, t, gradient="exact")
  with pytest.raises(ValueError, match="student_embeddings .* must have the same shape"):
    mse_distillation_loss(np.ones((2, 3)), np.ones((3, 3)))


@pytest.mark.slow
def test_mse_and_contrastive_match_numpy():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
  np.testing.assert_allclose(mse_distillation_loss(s, t), ((s - t) ** 2).mean(1), rtol=1e-5)
  sn = s / np.linalg.norm(s, axis=1, keepdims=True)
  tn = t / np.linalg.norm(t, axis=1, keepdims=True)
  logits = sn @ tn.T / 0.1
  row = -np.diag(logits - logsumexp(logits, axis=1, keepdims=True))
  col = -np.diag(logits - logsumexp(logits, axis=0, keepdims=True))
  np.testing.assert_allclose(contrastive_distillation_loss(s, t, temperature=0.1), row,
                             rtol=1e-4)
  np.testing.assert_allclose(
      contrastive_distillation_loss(s, t, temperature=0.1, symmetric=True), (row + col) / 2,
      rtol=1e-4)
  combined = weighted_sum({"ot": row, "nce": col}, {"ot": 1.0, "nce": 0.3})
  np.testing.assert_allclose(combined, row + 0.3 * col, rtol=1e-5)
  with pytest.raises(ValueError, match="not given"):
    weighted_sum({"ot": row}, {"nce": 1.0})


def test_cost_matrix_matches_numpy():
  s, t, _, _ = random_batch(ls=(7,), lt=(10,))
  np.testing.assert_allclose(token_cost_matrix(s, t)[0], numpy_cosine_cost(s[0], t[0]),
                             atol=1e-5)


@pytest.mark.slow
def test_contrastive_with_extra_teacher_rows_equals_the_slice_of_the_full_batch():
  rng = np.random.default_rng(4)
  s, t = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  full = contrastive_distillation_loss(s, t, temperature=0.1)
  second_half = contrastive_distillation_loss(s[3:], t, temperature=0.1, label_offset=3)
  np.testing.assert_allclose(second_half, full[3:], rtol=1e-5)
  with pytest.raises(ValueError, match="symmetric needs"):
    contrastive_distillation_loss(s[3:], t, symmetric=True)


def test_centered_cost_matches_numpy_and_ignores_a_shared_offset():
  s, t, sm, tm = random_batch(seed=8)
  loss, diag = ot_distillation_loss(s, t, sm, tm, center=True, return_diagnostics=True, **TIGHT)
  mean = np.concatenate([t[k][tm[k]] for k in range(len(t))]).astype(np.float64).mean(0)
  for k in range(len(s)):
    ss, tt = s[k][sm[k]] - mean, t[k][tm[k]] - mean
    a, b = np.full(len(ss), 1 / len(ss)), np.full(len(tt), 1 / len(tt))
    cost = numpy_cosine_cost(ss, tt)
    plan, _ = numpy_sinkhorn(cost, a, b, 0.05)
    assert abs(float(loss[k]) - np.sum(plan * cost)) < 1e-4
  shifted = ot_distillation_loss(s + 5.0, t + 5.0, sm, tm, center=True, **TIGHT)
  np.testing.assert_allclose(shifted, loss, atol=1e-4)


def _unpadded_reference(s, t, sm, tm, **kw):
  """Each pair alone, trimmed to its real tokens: losses and gradients, padded back with 0."""
  losses, grad_s, grad_t = [], np.zeros_like(s), np.zeros_like(t)
  # Compiled whole (one program per pair's shape), not run op by op: the same values, sooner.
  fn = jax.jit(jax.value_and_grad(lambda x, y: ot_distillation_loss(x[None], y[None], **kw)[0],
                                  argnums=(0, 1)))
  for k in range(len(s)):
    ls, lt = int(sm[k].sum()), int(tm[k].sum())
    value, (gs, gt) = fn(s[k, :ls], t[k, :lt])
    losses.append(float(value))
    grad_s[k, :ls], grad_t[k, :lt] = gs, gt
  return np.array(losses), grad_s, grad_t


@pytest.mark.slow
@pytest.mark.parametrize("cost,center,epsilon,mode", [
    ("cosine", False, 0.05, "stop_gradient"), ("cosine", True, 0.05, "stop_gradient"),
    ("sqeuclidean", False, 1.0, "stop_gradient"), ("sqeuclidean", True, 1.0, "stop_gradient"),
    ("cosine", False, 0.1, "unroll")])
def test_zero_padding_is_inert_in_value_and_gradient(cost, center, epsilon, mode):
  s, t, sm, tm = random_batch(seed=9, ls=(6, 3, 1, 7), lt=(9, 2, 7, 10))
  # What jnp.pad or a collate function makes: zeros beyond each length.
  s, t = np.where(sm[..., None], s, 0), np.where(tm[..., None], t, 0)
  # Unrolling differentiates every iteration: fewer keep it quick, and both sides run alike.
  tolerance = TIGHT if mode != "unroll" else dict(threshold=1e-4, max_iterations=300)
  kw = dict(cost=cost, epsilon=epsilon, gradient=mode, **tolerance)
  loss = lambda s, t: ot_distillation_loss(s, t, sm, tm, center=center, **kw)
  values = jax.jit(loss)(s, t)
  grad_s, grad_t = jax.jit(jax.grad(lambda s, t: loss(s, t).sum(), argnums=(0, 1)))(s, t)
  assert np.all(np.isfinite(grad_s)) and np.all(np.isfinite(grad_t))
  assert np.all(np.asarray(grad_s)[~sm] == 0) and np.all(np.asarray(grad_t)[~tm] == 0)
  if center:  # the batch's mean real teacher token, held constant, shifts both sides
    mean = np.asarray(t, np.float64)[tm].mean(0).astype(np.float32)
    s, t = np.where(sm[..., None], s - mean, 0), np.where(tm[..., None], t - mean, 0)
  expected, expected_s, expected_t = _unpadded_reference(s, t, sm, tm, **kw)
  np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad_s, expected_s, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grad_t, expected_t, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("center", [False, True])
def test_nan_and_inf_in_masked_positions_are_ignored(center):
  s, t, sm, tm = random_batch(seed=10)
  zeros = np.where(sm[..., None], s, 0), np.where(tm[..., None], t, 0)
  poisoned = np.where(sm[..., None], s, np.nan), np.where(tm[..., None], t, np.inf)
  poisoned[1][0, -1, 0] = -np.inf

  def value_and_grads(s, t, mode="stop_gradient"):
    fn = lambda s, t: ot_distillation_loss(s, t, sm, tm, center=center, gradient=mode,
                                           epsilon=0.1).sum()
    return jax.value_and_grad(fn, argnums=(0, 1))(s, t)

  for mode in ("stop_gradient", "unroll"):
    value, (gs, gt) = value_and_grads(*poisoned, mode)
    expected, (es, et) = value_and_grads(*zeros, mode)
    assert np.isfinite(float(value)) and float(value) == pytest.approx(float(expected), abs=1e-6)
    np.testing.assert_allclose(gs, es, atol=1e-6)
    np.testing.assert_allclose(gt, et, atol=1e-6)


@pytest.mark.slow
def test_pooling_ignores_masked_positions_and_l2_normalize_has_finite_gradients():
  from optical_jax.pooling import cls_pool, l2_normalize, mean_pool
  rng = np.random.default_rng(0)
  tokens = rng.normal(size=(3, 5, 4)).astype(np.float32)
  mask = np.arange(5)[None] < np.array([5, 2, 0])[:, None]
  poisoned = np.where(mask[..., None], tokens, np.nan)
  expected = np.stack([tokens[k][mask[k]].mean(0) if mask[k].any() else np.zeros(4)
                       for k in range(3)])
  for normalize in (False, True):
    pooled = mean_pool(poisoned, mask, normalize=normalize)
    reference = expected / np.maximum(np.linalg.norm(expected, axis=1, keepdims=True),
                                      1e-12) if normalize else expected
    np.testing.assert_allclose(pooled, reference, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(cls_pool(poisoned, mask)[2], np.zeros(4))
  grad = jax.grad(lambda x: mean_pool(x, mask, normalize=True).sum())(poisoned)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~mask] == 0)
  x = np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)
  np.testing.assert_allclose(l2_normalize(x), [[0, 0], [0.6, 0.8]], rtol=1e-6)
  grad = jax.grad(lambda x: (l2_normalize(x) * np.array([[0.0, 0.0], [1.0, 0.0]])).sum())(x)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[0] == 0)
  # Away from zero it is the analytic gradient: (I - u u^T) / ||x||, u = x / ||x||.
  u = x[1] / 5.0
  np.testing.assert_allclose(grad[1], (np.eye(2) - np.outer(u, u))[0] / 5.0, rtol=1e-5)


def test_bad_options_are_named():
  s, t, sm, tm = random_batch()
  weights = np.ones(sm.shape, np.float32)
  negative = weights.copy()
  negative[1, 2] = -0.5
  with pytest.raises(ValueError, match=r"student_weights must be finite and non-negative on "
                     r"unmasked tokens, got -0.5 at \[1, 2\]"):
    ot_distillation_loss(s, t, sm, tm, student_weights=negative)
  not_finite = np.ones(tm.shape, np.float32)
  not_finite[0, 0] = np.nan
  with pytest.raises(ValueError, match="teacher_weights must be finite and non-negative"):
    ot_distillation_loss(s, t, sm, tm, teacher_weights=not_finite)
  # On padding they are ignored, like the tokens.
  padded_negative = weights.copy()
  padded_negative[~sm] = -1.0
  np.testing.assert_allclose(ot_distillation_loss(s, t, sm, tm, student_weights=padded_negative),
                             ot_distillation_loss(s, t, sm, tm), rtol=1e-6)
  for epsilon in (0.0, -0.1, np.inf, np.nan):
    with pytest.raises(ValueError, match="epsilon must be a finite positive number"):
      ot_distillation_loss(s, t, epsilon=epsilon)
  with pytest.raises(ValueError, match="epsilon must be a scalar"):
    ot_distillation_loss(s, t, epsilon=np.array([0.1, 0.2]))
  for temperature in (0.0, np.inf, np.nan):
    with pytest.raises(ValueError, match="temperature must be a finite positive number"):
      contrastive_distillation_loss(s[:, 0], t[:, 0, :8], temperature=temperature)
  with pytest.raises(ValueError, match=r"gradient='implicit' needs epsilon >= 0.01 .* use "
                     r"gradient='stop_gradient'"):
    ot_distillation_loss(s, t, epsilon=0.005, gradient="implicit")


@pytest.mark.slow
def test_traced_epsilon_and_temperature_under_jit_equal_the_eager_values():
  s, t, sm, tm = random_batch()
  by_epsilon = jax.jit(lambda eps: ot_distillation_loss(s, t, sm, tm, epsilon=eps))
  for epsilon in (0.05, 0.3):
    np.testing.assert_allclose(by_epsilon(epsilon), ot_distillation_loss(s, t, sm, tm,
                                                                         epsilon=epsilon),
                               rtol=1e-5)
  by_temperature = jax.jit(lambda tau: contrastive_distillation_loss(s[:, 0], t[:, 0],
                                                                     temperature=tau))
  np.testing.assert_allclose(by_temperature(0.2),
                             contrastive_distillation_loss(s[:, 0], t[:, 0], temperature=0.2),
                             rtol=1e-5)
  # Traced weights cannot be checked: negative ones count as 0 there, as documented.
  weights = np.ones(sm.shape, np.float32)
  jitted = jax.jit(lambda w: ot_distillation_loss(s, t, sm, tm, student_weights=w))
  np.testing.assert_allclose(jitted(weights), ot_distillation_loss(s, t, sm, tm), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stop_gradient", "unroll", "implicit"])
def test_a_row_of_zero_weights_counts_as_empty(mode):
  s, t, sm, tm = random_batch(seed=11)
  weights = sm.astype(np.float32)
  weights[1] = 0.0
  loss, grad = jax.value_and_grad(
      lambda x: ot_distillation_loss(x, t, sm, tm, student_weights=weights, gradient=mode,
                                     epsilon=0.1).sum())(s)
  per_pair = ot_distillation_loss(s, t, sm, tm, student_weights=weights, gradient=mode,
                                  epsilon=0.1)
  assert float(per_pair[1]) == 0.0 and np.isfinite(float(loss))
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[1] == 0)
  np.testing.assert_allclose(np.asarray(per_pair)[[0, 2, 3]],
                             np.asarray(ot_distillation_loss(s, t, sm, tm, gradient=mode,
                                                             epsilon=0.1))[[0, 2, 3]],
                             rtol=1e-5)


def numpy_unbalanced_sinkhorn(cost, a, b, epsilon, tau_a, tau_b, iterations=20000):
  """Entropic unbalanced OT in float64: min <P, C> - eps H(P) + lam_a KL(P 1 | a)
  + lam_b KL(P^T 1 | b), tau = lam / (lam + eps); the plan exp((f + g - C) / eps)."""
  f, g = np.zeros(len(a)), np.zeros(len(b))
  for _ in range(iterations):
    f_new = tau_a * (epsilon * np.log(a) - epsilon * logsumexp((g[None, :] - cost) / epsilon,
                                                               axis=1))
    g = tau_b * (epsilon * np.log(b) - epsilon * logsumexp((f_new[:, None] - cost) / epsilon,
                                                           axis=0))
    done = np.max(np.abs(f_new - f)) < 1e-13
    f = f_new
    if done:
      break
  return np.exp((f[:, None] + g[None, :] - cost) / epsilon)


@pytest.mark.parametrize("tau_a, tau_b", [(0.5, 1.0), (0.8, 0.6)])
def test_unbalanced_plan_and_loss_match_float64_numpy(tau_a, tau_b):
  s, t, sm, tm = random_batch(seed=6)
  loss, diag = ot_distillation_loss(s, t, sm, tm, epsilon=0.1, tau_a=tau_a, tau_b=tau_b,
                                    return_diagnostics=True, **TIGHT)
  for k in range(len(s)):
    ss, tt = s[k][sm[k]].astype(np.float64), t[k][tm[k]].astype(np.float64)
    cost = numpy_cosine_cost(ss, tt)
    plan = numpy_unbalanced_sinkhorn(cost, np.full(len(ss), 1 / len(ss)),
                                     np.full(len(tt), 1 / len(tt)), 0.1, tau_a, tau_b)
    ours = np.asarray(diag.plan[k])
    np.testing.assert_allclose(ours[: len(ss), : len(tt)], plan, atol=1e-4)
    assert np.all(ours[len(ss):] == 0) and np.all(ours[:, len(tt):] == 0)  # padding inert
    assert abs(float(loss[k]) - np.sum(plan * cost)) < 1e-4


@pytest.mark.slow
def test_unbalanced_ot_transports_less_from_a_token_without_counterpart():
  rng = np.random.default_rng(7)
  teacher = rng.normal(size=(1, 5, 16)).astype(np.float32)
  # The student holds the teacher's tokens (slightly moved) and one token of its own.
  student = np.concatenate([teacher + 0.05 * rng.normal(size=teacher.shape),
                            -teacher.mean(1, keepdims=True)], axis=1).astype(np.float32)
  mass = {}
  for tau in (1.0, 0.5):
    loss, diag = ot_distillation_loss(student, teacher, tau_a=tau, tau_b=tau,
                                      return_diagnostics=True, **TIGHT)
    mass[tau] = (float(diag.plan[0, -1].sum()), float(loss[0]))
  assert abs(mass[1.0][0] - 1 / 6) < 1e-3  # balanced: the extra token sends its 1/6
  assert mass[0.5][0] < 0.5 * mass[1.0][0] and mass[0.5][1] < mass[1.0][1]
  np.testing.assert_array_equal(  # tau 1 is the balanced loss itself
      ot_distillation_loss(student, teacher, tau_a=1.0, tau_b=1.0),
      ot_distillation_loss(student, teacher))


def test_unbalanced_gradient_is_finite_with_padding_and_bad_taus_are_named():
  s, t, sm, tm = random_batch(seed=8)
  grad = jax.grad(lambda x: ot_distillation_loss(x, t, sm, tm, tau_a=0.7, tau_b=0.7).sum())(s)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~sm] == 0)
  for bad in (0.0, 1.5, float("nan")):
    with pytest.raises(ValueError, match="tau_a must be in \\(0, 1\\]"):
      ot_distillation_loss(s, t, sm, tm, tau_a=bad)
  with pytest.raises(ValueError, match="gradient='implicit' is for balanced OT"):
    ot_distillation_loss(s, t, sm, tm, tau_b=0.5, gradient="implicit")


def numpy_maxsim_nce(s, t, sm, tm, temperature, offset=0):
  s, t = s.astype(np.float64), t.astype(np.float64)
  losses = []
  for k in range(len(s)):
    q = s[k][sm[k]] / np.linalg.norm(s[k][sm[k]], axis=-1, keepdims=True)
    scores = np.array([(q @ (t[l][tm[l]] / np.linalg.norm(t[l][tm[l]], axis=-1,
                                                          keepdims=True)).T).max(1).mean()
                       for l in range(len(t))]) / temperature
    losses.append(logsumexp(scores) - scores[k + offset])
  return np.array(losses)


@pytest.mark.slow
def test_maxsim_contrastive_matches_numpy_with_padding_and_extra_teachers():
  s, t, sm, tm = random_batch(seed=9, ls=(6, 3, 1, 5), lt=(9, 2, 7, 4), dim=8)
  rng = np.random.default_rng(10)
  s[~sm] = np.nan  # padding holds anything
  t[~tm] = rng.normal(size=t[~tm].shape) * 100
  np.testing.assert_allclose(maxsim_contrastive_loss(s, t, sm, tm, temperature=0.1),
                             numpy_maxsim_nce(s, t, sm, tm, 0.1), atol=1e-5)
  # The student rows of device 1 against every device's teachers: the slice of the whole.
  whole = maxsim_contrastive_loss(np.nan_to_num(s), t, sm, tm, temperature=0.1)
  np.testing.assert_allclose(
      maxsim_contrastive_loss(np.nan_to_num(s[2:]), t, sm[2:], tm, temperature=0.1,
                              label_offset=2), whole[2:], atol=1e-6)
  grad = jax.grad(lambda x: maxsim_contrastive_loss(x, t, sm, tm).sum())(np.nan_to_num(s))
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~sm] == 0)
  assert np.any(np.asarray(grad)[sm] != 0)


def test_maxsim_contrastive_rewards_each_token_finding_its_counterpart():
  rng = np.random.default_rng(11)
  teacher = rng.normal(size=(4, 6, 16)).astype(np.float32)
  aligned = teacher[:, ::-1][:, :4] + 0.05 * rng.normal(size=(4, 4, 16))  # token order free
  shuffled = aligned[[1, 2, 3, 0]]  # each student row holds another row's tokens
  near = maxsim_contrastive_loss(aligned.astype(np.float32), teacher, temperature=0.05)
  far = maxsim_contrastive_loss(shuffled.astype(np.float32), teacher, temperature=0.05)
  assert np.all(np.asarray(near) < 0.01) and np.all(np.asarray(far) > 1.0)
  with pytest.raises(ValueError, match="teacher_tokens has 2 rows, fewer than the 4"):
    maxsim_contrastive_loss(aligned, teacher[:2])
  with pytest.raises(ValueError, match="temperature must be a finite positive number"):
    maxsim_contrastive_loss(aligned, teacher, temperature=0.0)
