"""Distillation losses: pure functions, arrays in, `jax.Array` out.

Everything here is jit-, vmap- and grad-friendly, returns unreduced per-example values
(`[batch]`) unless documented otherwise, and imports neither transformers, orbax nor the
training stack, so other JAX projects can use it on its own::

  from optical_jax.losses import ot_distillation_loss

The OT loss is OPTICAL's (Huang, Yu, Allan, WSDM 2023): the student's token embeddings of
a low-resource sentence are aligned to the teacher's token embeddings of its translation by
entropic optimal transport, and the loss is the transport cost <P, C>.

The retrieval scores `dense_scores` and `maxsim_scores` live in `optical_jax.scoring`; they
are re-exported here, where they used to be.
"""

from __future__ import annotations

import math
from typing import Literal, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import implicit_differentiation, lineax_implicit, sinkhorn

from optical_jax.pooling import l2_normalize
from optical_jax.scoring import dense_scores, maxsim_scores

__all__ = [
    "OTDiagnostics", "token_cost_matrix", "ot_distillation_loss", "mse_distillation_loss",
    "contrastive_distillation_loss", "maxsim_contrastive_loss", "weighted_sum", "dense_scores",
    "maxsim_scores",
]

GradientMode = Literal["stop_gradient", "implicit", "unroll"]
CostName = Literal["cosine", "sqeuclidean"]
# Implicit differentiation solves a linear system scaled by the marginals: exact zeros make
# it singular (NaN gradients), so in that mode padding weighs this much instead of 0.
_IMPLICIT_PADDING_WEIGHT = 1e-8
# Below this (cosine costs, in [0, 2]) the implicit linear solve failed in every case probed:
# unpadded [2, 6, 8] x [2, 7, 8] (3 seeds), padded [4, 24 or 48, 64] x [4, 32, 64] (2 seeds).
_IMPLICIT_MIN_EPSILON = 0.01


def _normal_cg(lin, b, lin_t=None, symmetric: bool = False, ridge_kernel: float = 0.0):
  """Solves `lin(x) = b` by conjugate gradients on the normal equations, as lineax's
  `NormalCG` that ott uses by default, with JAX's own CG: no equinox closure conversion
  (which refuses the manual-axis shapes inside `shard_map`) and no host callback for its
  error check (which `jax.export` cannot serialise). `ridge_kernel * sum(x)` picks the
  zero-sum solution of balanced OT's singular system, as in ott's solvers."""
  ridge = lambda op: (lambda x: op(x) + ridge_kernel * jnp.sum(x))
  a = ridge(lin)
  if symmetric:
    return jax.scipy.sparse.linalg.cg(a, b, tol=1e-6, atol=1e-6)[0]
  a_t = ridge(lin_t)
  return jax.scipy.sparse.linalg.cg(lambda x: a_t(a(x)), a_t(b), tol=1e-6, atol=1e-6)[0]


class _NativeImplicitDiff(implicit_differentiation.ImplicitDiff):
  """ott's implicit differentiation with `_normal_cg`. ott 0.6 ignores `solver=` (its
  `solve` only ever takes `lineax_implicit.solve_lineax`), so that name is swapped for
  the solve: the backward pass's trace, once per compilation, in the tracing thread."""

  def solve(self, *args, **kwargs):
    lineax_solve = lineax_implicit.solve_lineax
    lineax_implicit.solve_lineax = _normal_cg
    try:
      return super().solve(*args, **kwargs)
    finally:
      lineax_implicit.solve_lineax = lineax_solve


class OTDiagnostics(NamedTuple):
  """What the Sinkhorn solver did for each pair of the batch."""

  plan: jax.Array  # [batch, Ls, Lt] transport plans (rows: student tokens)
  converged: jax.Array  # [batch] bool: marginal error under the threshold
  iterations: jax.Array  # [batch] int32: Sinkhorn iterations run


def _as_array(name: str, x, rank: int) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim != rank:
    raise ValueError(f"{name} must have rank {rank}, got shape {x.shape}")
  return x


def _check_float(name: str, x: jax.Array) -> None:
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}")


def _token_inputs(student_tokens, teacher_tokens, student_mask, teacher_mask):
  student_tokens = _as_array("student_tokens", student_tokens, 3)
  teacher_tokens = _as_array("teacher_tokens", teacher_tokens, 3)
  _check_float("student_tokens", student_tokens)
  _check_float("teacher_tokens", teacher_tokens)
  batch = student_tokens.shape[0]
  if teacher_tokens.shape[0] != batch:
    raise ValueError(f"teacher_tokens has batch {teacher_tokens.shape[0]}, student_tokens "
                     f"has {batch}")
  if teacher_tokens.shape[2] != student_tokens.shape[2]:
    raise ValueError(f"teacher_tokens has dim {teacher_tokens.shape[2]}, student_tokens has "
                     f"{student_tokens.shape[2]}: project the student first")

  def mask_or_ones(name, mask, tokens):
    if mask is None:
      return jnp.ones(tokens.shape[:2], bool)
    mask = jnp.asarray(mask)
    if mask.shape != tokens.shape[:2]:
      raise ValueError(f"{name} must have shape {tokens.shape[:2]}, got {mask.shape}")
    return mask.astype(bool)

  student_mask = mask_or_ones("student_mask", student_mask, student_tokens)
  teacher_mask = mask_or_ones("teacher_mask", teacher_mask, teacher_tokens)
  # Padding is inert: masked tokens become zeros before anything reads them (NaN or inf
  # there would poison the costs and the mean), and where() sends them a zero gradient.
  return (jnp.where(student_mask[..., None], student_tokens, 0),
          jnp.where(teacher_mask[..., None], teacher_tokens, 0), student_mask, teacher_mask)


def _concrete(*xs) -> bool:
  """Whether every argument has a value now (not a tracer under jit, vmap or grad)."""
  return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _check_positive(name: str, value, hint: str) -> None:
  """Rejects a non-scalar, NaN, inf or non-positive option; tracers pass unchecked."""
  if jnp.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}")
  if not _concrete(value):
    return  # traced (e.g. jit over it): its value is unknown here
  number = float(value)
  if not (math.isfinite(number) and number > 0):
    raise ValueError(f"{name} must be a finite positive number, got {number}: {hint}")


def token_cost_matrix(student_tokens: jax.Array, teacher_tokens: jax.Array, *,
                      cost: CostName = "cosine") -> jax.Array:
  """Pairwise token costs `[batch, Ls, Lt]` in float32.

  `cosine`: C_ij = 1 - cos(s_i, t_j), in [0, 2]. `sqeuclidean`: ||s_i - t_j||^2.

  >>> s = jnp.array([[[1., 0.], [0., 1.]]]); t = jnp.array([[[1., 0.]]])
  >>> token_cost_matrix(s, t)
  Array([[[0.],
          [1.]]], dtype=float32)
  """
  s = student_tokens.astype(jnp.float32)
  t = teacher_tokens.astype(jnp.float32)
  if cost == "cosine":
    return 1.0 - jnp.einsum("bid,bjd->bij", l2_normalize(s), l2_normalize(t))
  if cost == "sqeuclidean":
    sq = jnp.sum(s * s, -1)[:, :, None] + jnp.sum(t * t, -1)[:, None, :]
    return jnp.maximum(sq - 2.0 * jnp.einsum("bid,bjd->bij", s, t), 0.0)
  raise ValueError(f"cost must be 'cosine' or 'sqeuclidean', got {cost!r}")


def _marginal(name: str, mask: jax.Array, weights, pad_weight: float
              ) -> tuple[jax.Array, jax.Array]:
  """Token weights summing to one over the unmasked tokens, `pad_weight` where they are 0;
  and the mask less the rows whose weights sum to 0 (they count as empty)."""
  if weights is None:
    raw = mask.astype(jnp.float32)
  else:
    if _concrete(weights, mask):
      values = np.asarray(weights, np.float32)
      if values.shape != mask.shape:
        raise ValueError(f"{name} must have shape {mask.shape}, got {values.shape}")
      # Only real tokens count: padding may hold anything.
      bad = np.argwhere(np.asarray(mask) & ~(np.isfinite(values) & (values >= 0)))
      if len(bad):
        row, column = bad[0]
        raise ValueError(f"{name} must be finite and non-negative on unmasked tokens, got "
                         f"{values[row, column]} at [{row}, {column}] ({len(bad)} such): "
                         "pass token weights such as idf, clipped at 0")
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != mask.shape:
      raise ValueError(f"{name} must have shape {mask.shape}, got {weights.shape}")
    # Under jit the values cannot be checked: negative weights count as 0 there.
    raw = jnp.where(mask, jnp.maximum(weights, 0.0), 0.0)
  total = jnp.sum(raw, axis=-1, keepdims=True)
  marginal = raw / jnp.where(total > 0, total, 1.0)
  if pad_weight:
    # Any zero mass (padding, a zero weight) makes the implicit linear system singular.
    marginal = jnp.where(marginal > 0, marginal, pad_weight)
    marginal = marginal / jnp.sum(marginal, axis=-1, keepdims=True)
  return marginal, mask & (total > 0)


def ot_distillation_loss(
    student_tokens: jax.Array,
    teacher_tokens: jax.Array,
    student_mask: jax.Array | None = None,
    teacher_mask: jax.Array | None = None,
    *,
    student_weights: jax.Array | None = None,
    teacher_weights: jax.Array | None = None,
    cost: CostName = "cosine",
    epsilon: float = 0.05,
    max_iterations: int = 100,
    threshold: float = 1e-3,
    gradient: GradientMode = "stop_gradient",
    center: bool = False,
    tau_a: float = 1.0,
    tau_b: float = 1.0,
    return_diagnostics: bool = False,
) -> jax.Array | tuple[jax.Array, OTDiagnostics]:
  r"""OPTICAL's optimal-transport token distillation loss, one value per sentence pair.

  For each pair, with cost matrix :math:`C_{ij} = 1 - \cos(s_i, t_j)` between student
  token :math:`s_i` and teacher token :math:`t_j`, and marginals :math:`a, b` (uniform over
  unmasked tokens unless weights are given), the entropic OT plan is

  .. math:: P = \arg\min_{P \in U(a, b)} \langle P, C \rangle - \epsilon H(P)

  computed by ott-jax's log-domain Sinkhorn (vmapped over the batch), and the loss is
  :math:`\langle P, C \rangle = \sum_{ij} P_{ij} C_{ij}`. Padded (masked) tokens get zero
  mass and are never read: whatever they hold (zeros, NaN), the loss and the gradient are
  those of the unpadded pair, and padded tokens get a zero gradient. `Ls` and `Lt` may
  differ (different tokenizers).

  Gradient modes (`gradient`):
    * `"stop_gradient"` (default): the plan is treated as a constant, so the gradient is
      :math:`P^\top \partial C`. This is the exact gradient of the entropic OT cost w.r.t.
      the costs (Danskin's theorem), costs one cost-matrix backward pass, needs no solver
      memory, and stays finite with zero-weight padding.
    * `"implicit"`: differentiates the plan too, by implicit differentiation of the
      Sinkhorn fixed point (a linear solve per pair; padding then weighs 1e-8, not 0).
      The solve is ill-conditioned: with cosine costs it failed on every input probed at
      `epsilon` < 0.01 (a ValueError here), on most at 0.01, on some at 0.02, and on some
      padded batches at 0.05-0.07, converged plans or not. A failed solve surfaces as lineax's
      error "A linear solver returned non-finite (NaN or inf) output": then use
      `"stop_gradient"` (the exact gradient of the OT cost) or `"unroll"`.
    * `"unroll"`: backpropagates through the Sinkhorn iterations (memory grows with them).

  Args:
    student_tokens: `[batch, Ls, d]` student token embeddings.
    teacher_tokens: `[batch, Lt, d]` teacher token embeddings (same `d`).
    student_mask: `[batch, Ls]` true for real tokens; all true if omitted.
    teacher_mask: `[batch, Lt]` likewise.
    student_weights: optional `[batch, Ls]` non-negative token weights (e.g. idf),
      normalised over unmasked tokens; uniform if omitted. Negative or non-finite weights
      on unmasked tokens are a ValueError (under `jit`, where they cannot be checked,
      negative ones count as 0); a row of zero weights counts as a row with no real token.
    teacher_weights: optional `[batch, Lt]` likewise.
    cost: `"cosine"` (1 - cos) or `"sqeuclidean"`.
    epsilon: entropic regularisation, in the units of the cost: finite and positive. It
      may be traced (e.g. `jax.jit` over it); its value is then not checked.
    max_iterations: Sinkhorn iteration cap.
    threshold: stop when the marginal error (L1) falls below it.
    gradient: `"stop_gradient"`, `"implicit"` or `"unroll"`, see above.
    center: subtract the batch's mean real teacher token (held constant) from both sides
      before the cost, so that moving every student token towards the teacher's shared
      direction (anisotropy) no longer lowers the cost. Couples the examples of a batch.
    tau_a: in (0, 1]: 1 keeps the student marginal exact (balanced OT); below 1 it is
      relaxed by a KL penalty of weight `epsilon * tau_a / (1 - tau_a)` (ott-jax's unbalanced
      Sinkhorn), so a student token without a counterpart need not be transported.
    tau_b: likewise for the teacher marginal. Not with `gradient="implicit"`.
    return_diagnostics: also return an `OTDiagnostics` (plans, convergence, iterations).

  Returns:
    `[batch]` float32 losses, or `(losses, OTDiagnostics)`. A pair with no real token on
    either side has loss 0.

  >>> import jax
  >>> k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  >>> student = jax.random.normal(k1, (2, 5, 8)); teacher = jax.random.normal(k2, (2, 7, 8))
  >>> loss = ot_distillation_loss(student, teacher, jnp.ones((2, 5)), jnp.ones((2, 7)))
  >>> loss.shape
  (2,)
  >>> float(ot_distillation_loss(teacher, teacher)[0]) < float(loss[0])
  True
  """
  if gradient not in ("stop_gradient", "implicit", "unroll"):
    raise ValueError(f"gradient must be 'stop_gradient', 'implicit' or 'unroll', got "
                     f"{gradient!r}")
  _check_positive("epsilon", epsilon, "the entropic regularisation, in the units of the cost "
                  "(e.g. 0.05 for cosine)")
  for name, tau in (("tau_a", tau_a), ("tau_b", tau_b)):
    if _concrete(tau) and not 0.0 < float(tau) <= 1.0:
      raise ValueError(f"{name} must be in (0, 1] (1: that marginal is exact), got {tau}")
  if gradient == "implicit" and not (_concrete(tau_a, tau_b) and float(tau_a) == float(tau_b)
                                     == 1.0):
    raise ValueError("gradient='implicit' is for balanced OT (tau_a = tau_b = 1): use "
                     "'stop_gradient' or 'unroll' with unbalanced marginals")
  if (gradient == "implicit" and cost == "cosine" and _concrete(epsilon)
      and float(epsilon) < _IMPLICIT_MIN_EPSILON):
    raise ValueError(f"gradient='implicit' needs epsilon >= {_IMPLICIT_MIN_EPSILON} with cosine "
                     f"costs, got {float(epsilon)}: its linear solve fails below; use "
                     "gradient='stop_gradient' (the exact gradient of the OT cost) or 'unroll'")
  student_tokens, teacher_tokens, student_mask, teacher_mask = _token_inputs(
      student_tokens, teacher_tokens, student_mask, teacher_mask)
  pad_weight = _IMPLICIT_PADDING_WEIGHT if gradient == "implicit" else 0.0
  a, student_real = _marginal("student_weights", student_mask, student_weights, pad_weight)
  b, teacher_real = _marginal("teacher_weights", teacher_mask, teacher_weights, pad_weight)
  if center:
    weights = teacher_mask[..., None].astype(jnp.float32)
    mean = jnp.sum(teacher_tokens.astype(jnp.float32) * weights, axis=(0, 1)) / jnp.maximum(
        jnp.sum(weights), 1.0)
    mean = jax.lax.stop_gradient(mean)
    student_tokens, teacher_tokens = student_tokens - mean, teacher_tokens - mean
  costs = token_cost_matrix(student_tokens, teacher_tokens, cost=cost)

  # Balanced OT's potentials are defined up to a shared constant, so the implicit linear
  # system is singular along it; `ridge_kernel` solves for the zero-sum solution, which the
  # gradient does not depend on. Without it NormalCG returned NaN on some CPUs (AVX-512).
  implicit_diff = (_NativeImplicitDiff(solver_kwargs={"ridge_kernel": 1.0})
                   if gradient == "implicit" else None)
  solver = sinkhorn.Sinkhorn(
      threshold=threshold, max_iterations=max_iterations, implicit_diff=implicit_diff,
      use_danskin=gradient != "unroll")

  def solve(cost_matrix, a_i, b_i):
    geom = geometry.Geometry(cost_matrix=cost_matrix, epsilon=epsilon)
    out = solver(linear_problem.LinearProblem(geom, a=a_i, b=b_i, tau_a=tau_a, tau_b=tau_b))
    return out.matrix, out.converged, out.n_iters

  solve_costs = jax.lax.stop_gradient(costs) if gradient == "stop_gradient" else costs
  plan, converged, iterations = jax.vmap(solve)(solve_costs, a, b)
  plan = jnp.where(student_real[:, :, None] & teacher_real[:, None, :], plan, 0.0)
  if gradient == "stop_gradient":
    plan = jax.lax.stop_gradient(plan)
  loss = jnp.sum(plan * costs, axis=(1, 2))
  if return_diagnostics:
    return loss, OTDiagnostics(plan, converged, iterations.astype(jnp.int32))
  return loss


def _pair_embeddings(student: jax.Array, teacher: jax.Array) -> tuple[jax.Array, jax.Array]:
  student = _as_array("student_embeddings", student, 2)
  teacher = _as_array("teacher_embeddings", teacher, 2)
  _check_float("student_embeddings", student)
  _check_float("teacher_embeddings", teacher)
  if student.shape != teacher.shape:
    raise ValueError(f"student_embeddings {student.shape} and teacher_embeddings "
                     f"{teacher.shape} must have the same shape")
  return student.astype(jnp.float32), teacher.astype(jnp.float32)


def mse_distillation_loss(student_embeddings: jax.Array,
                          teacher_embeddings: jax.Array) -> jax.Array:
  r"""Sentence-level distillation (Reimers & Gurevych, 2020): mean squared error per pair.

  :math:`\ell_k = \frac{1}{d} \lVert s_k - t_k \rVert^2` for pooled embeddings.

  Args:
    student_embeddings: `[batch, d]` pooled student embeddings.
    teacher_embeddings: `[batch, d]` pooled teacher embeddings.

  Returns:
    `[batch]` float32.

  >>> mse_distillation_loss(jnp.array([[1., 2.]]), jnp.array([[1., 0.]]))
  Array([2.], dtype=float32)
  """
  student, teacher = _pair_embeddings(student_embeddings, teacher_embeddings)
  return jnp.mean(jnp.square(student - teacher), axis=-1)


def contrastive_distillation_loss(student_embeddings: jax.Array, teacher_embeddings: jax.Array,
                                  *, temperature: float = 0.05, symmetric: bool = False,
                                  label_offset: int | jax.Array = 0) -> jax.Array:
  r"""In-batch InfoNCE between student and teacher sentence embeddings.

  With cosine similarities :math:`S_{kl} = \cos(s_k, t_l) / \tau`, the loss of pair k is
  :math:`-\log \mathrm{softmax}_l(S_{k\cdot})_k`: the student's sentence must find its own
  translation's teacher embedding among the batch's. `symmetric` averages it with the
  teacher-to-student direction.

  `teacher_embeddings` may hold more rows than the student's batch (extra negatives, e.g.
  the teachers of the whole global batch gathered across devices): student row k's
  translation is then teacher row `k + label_offset`.

  Args:
    student_embeddings: `[batch, d]`.
    teacher_embeddings: `[num_teachers, d]`, `num_teachers >= batch`.
    temperature: softmax temperature :math:`\tau`, finite and positive (unchecked when
      traced).
    symmetric: also score teacher rows against student columns, and average (needs
      `num_teachers == batch`).
    label_offset: index of student row 0's translation among the teacher rows.

  Returns:
    `[batch]` float32.

  >>> x = jnp.eye(3)
  >>> bool(jnp.all(contrastive_distillation_loss(x, x) < 1e-3))
  True
  """
  _check_positive("temperature", temperature, "the softmax temperature (e.g. 0.05)")
  student = _as_array("student_embeddings", student_embeddings, 2)
  teacher = _as_array("teacher_embeddings", teacher_embeddings, 2)
  if teacher.shape[0] < student.shape[0] or teacher.shape[1] != student.shape[1]:
    raise ValueError(f"teacher_embeddings {teacher.shape} must have the dim of "
                     f"student_embeddings {student.shape} and at least as many rows")
  if teacher.shape[0] != student.shape[0]:
    if symmetric:
      raise ValueError("symmetric needs as many teacher_embeddings rows as student rows")
    student, teacher = student.astype(jnp.float32), teacher.astype(jnp.float32)
  else:
    student, teacher = _pair_embeddings(student, teacher)
  logits = l2_normalize(student) @ l2_normalize(teacher).T / temperature
  rows = jnp.arange(logits.shape[0])
  loss = -jax.nn.log_softmax(logits, axis=1)[rows, rows + label_offset]
  if symmetric:
    diagonal = rows
    loss = 0.5 * (loss - jax.nn.log_softmax(logits, axis=0)[diagonal, diagonal])
  return loss


def maxsim_contrastive_loss(student_tokens: jax.Array, teacher_tokens: jax.Array,
                            student_mask: jax.Array | None = None,
                            teacher_mask: jax.Array | None = None, *,
                            temperature: float = 0.05,
                            label_offset: int | jax.Array = 0) -> jax.Array:
  r"""In-batch InfoNCE over late-interaction (MaxSim) scores of token embeddings.

  Student sentence k scores teacher sentence l by
  :math:`S_{kl} = \frac{1}{|k|} \sum_{i \in k} \max_{j \in l} \cos(s_i, t_j)`, the mean over
  its real tokens of the best cosine with any real token of l (ColBERT's MaxSim, scaled to
  [-1, 1]); the loss of pair k is :math:`-\log \mathrm{softmax}_l(S_{k\cdot} / \tau)_k`. It
  trains every student token to find its counterpart among the translation's tokens better
  than among the other sentences', which is what MaxSim retrieval against the teacher's
  passage tokens asks of it.

  Args:
    student_tokens: `[batch, Ls, d]`.
    teacher_tokens: `[num_teachers, Lt, d]`, `num_teachers >= batch` (extra rows are extra
      negatives, e.g. the global batch's teachers gathered across devices).
    student_mask: `[batch, Ls]` true for real tokens; all true if omitted.
    teacher_mask: `[num_teachers, Lt]` likewise.
    temperature: softmax temperature, finite and positive (unchecked when traced).
    label_offset: index of student row 0's translation among the teacher rows.

  Returns:
    `[batch]` float32. A student row without real tokens scores 0 against every teacher.

  >>> x = jnp.eye(4)[None].repeat(2, 0) * jnp.array([1., -1.])[:, None, None]
  >>> bool(jnp.all(maxsim_contrastive_loss(x[:, :2], x, temperature=0.01) < 1e-3))
  True
  """
  _check_positive("temperature", temperature, "the softmax temperature (e.g. 0.05)")
  student_tokens = _as_array("student_tokens", student_tokens, 3)
  teacher_tokens = _as_array("teacher_tokens", teacher_tokens, 3)
  _check_float("student_tokens", student_tokens)
  _check_float("teacher_tokens", teacher_tokens)
  if teacher_tokens.shape[0] < student_tokens.shape[0]:
    raise ValueError(f"teacher_tokens has {teacher_tokens.shape[0]} rows, fewer than the "
                     f"{student_tokens.shape[0]} of student_tokens")
  if teacher_tokens.shape[2] != student_tokens.shape[2]:
    raise ValueError(f"teacher_tokens has dim {teacher_tokens.shape[2]}, student_tokens has "
                     f"{student_tokens.shape[2]}: project the student first")
  student_mask = (jnp.ones(student_tokens.shape[:2], bool) if student_mask is None
                  else _as_array("student_mask", student_mask, 2).astype(bool))
  teacher_mask = (jnp.ones(teacher_tokens.shape[:2], bool) if teacher_mask is None
                  else _as_array("teacher_mask", teacher_mask, 2).astype(bool))
  # Masked tokens become zeros first: NaN or inf there would reach the einsum's gradient.
  student_tokens = jnp.where(student_mask[..., None], student_tokens, 0)
  teacher_tokens = jnp.where(teacher_mask[..., None], teacher_tokens, 0)
  scores = maxsim_scores(student_tokens, student_mask, teacher_tokens, teacher_mask)
  real = jnp.maximum(jnp.sum(student_mask, axis=1, keepdims=True), 1)
  logits = scores / real / temperature
  rows = jnp.arange(logits.shape[0])
  return -jax.nn.log_softmax(logits, axis=1)[rows, rows + label_offset]


def weighted_sum(terms: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
  """`sum_k weights[k] * terms[k]`, e.g. OT + contrastive; every weight needs its term.

  >>> weighted_sum({"ot": jnp.array([1., 2.]), "nce": jnp.array([3., 3.])}, {"ot": 1., "nce": .5})
  Array([2.5, 3.5], dtype=float32)
  """
  unknown = sorted(set(weights) - set(terms))
  if unknown:
    raise ValueError(f"weights name terms that were not given: {unknown}")
  if not weights:
    raise ValueError("weights is empty")
  shapes = {name: jnp.shape(terms[name]) for name in weights}
  if len(set(shapes.values())) > 1:
    raise ValueError(f"terms must have one shape, got {shapes}")
  return sum(float(w) * jnp.asarray(terms[name], jnp.float32) for name, w in weights.items())
