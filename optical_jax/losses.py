"""Distillation losses and retrieval scores: pure functions, arrays in, `jax.Array` out.

Everything here is jit-, vmap- and grad-friendly, returns unreduced per-example values
(`[batch]`) unless documented otherwise, and imports neither transformers, orbax nor the
training stack, so other JAX projects can use it on its own::

  from optical_jax.losses import ot_distillation_loss

The OT loss is OPTICAL's (Huang, Yu, Allan, WSDM 2023): the student's token embeddings of
a low-resource sentence are aligned to the teacher's token embeddings of its translation by
entropic optimal transport, and the loss is the transport cost <P, C>.
"""

from __future__ import annotations

import math
from typing import Literal, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import implicit_differentiation, sinkhorn

from optical_jax.pooling import l2_normalize

__all__ = [
    "OTDiagnostics", "token_cost_matrix", "ot_distillation_loss", "mse_distillation_loss",
    "contrastive_distillation_loss", "weighted_sum", "dense_scores", "maxsim_scores",
]

GradientMode = Literal["stop_gradient", "implicit", "unroll"]
CostName = Literal["cosine", "sqeuclidean"]
# Implicit differentiation solves a linear system scaled by the marginals: exact zeros make
# it singular (NaN gradients), so in that mode padding weighs this much instead of 0.
_IMPLICIT_PADDING_WEIGHT = 1e-8
_IMPLICIT_KW = {"ridge_kernel": 1.0}


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


def _identity(x):
  return x


def _marginal(name: str, mask: jax.Array, weights, pad_weight: float) -> jax.Array:
  """Token weights summing to one over the unmasked tokens; `pad_weight` elsewhere."""
  if weights is None:
    raw = mask.astype(jnp.float32)
  else:
    if _concrete(weights, mask):
      values = np.asarray(weights, np.float32)
      if values.shape != mask.shape:
        raise ValueError(f"{name} must have shape {mask.shape}, got {values.shape}")
      # Only real tokens count: padding may hold anything.
      bad = np.argwhere(np.asarray(mask) & ~(values >= 0))
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
    marginal = jnp.where(mask, marginal, pad_weight)
    marginal = marginal / jnp.sum(marginal, axis=-1, keepdims=True)
  return marginal


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
    return_diagnostics: bool = False,
) -> jax.Array | tuple[jax.Array, OTDiagnostics]:
  r"""OPTICAL's optimal-transport token distillation loss, one value per sentence pair.

  For each pair, with cost matrix :math:`C_{ij} = 1 - \cos(s_i, t_j)` between student
  token :math:`s_i` and teacher token :math:`t_j`, and marginals :math:`a, b` (uniform over
  unmasked tokens unless weights are given), the entropic OT plan is

  .. math:: P = \arg\min_{P \in U(a, b)} \langle P, C \rangle - \epsilon H(P)

  computed by ott-jax's log-domain Sinkhorn (vmapped over the batch), and the loss is
  :math:`\langle P, C \rangle = \sum_{ij} P_{ij} C_{ij}`. Padded tokens get zero mass, so
  they change nothing; `Ls` and `Lt` may differ (different tokenizers).

  Gradient modes (`gradient`):
    * `"stop_gradient"` (default): the plan is treated as a constant, so the gradient is
      :math:`P^\top \partial C`. This is the exact gradient of the entropic OT cost w.r.t.
      the costs (Danskin's theorem), costs one cost-matrix backward pass, needs no solver
      memory, and stays finite with zero-weight padding.
    * `"implicit"`: differentiates the plan too, by implicit differentiation of the
      Sinkhorn fixed point (a linear solve per pair; padding then weighs 1e-8, not 0).
      It needs a converged plan: with a small `epsilon` and too few iterations the
      linear solve fails (ott-jax/lineax raise an error).
    * `"unroll"`: backpropagates through the Sinkhorn iterations (memory grows with them).

  Args:
    student_tokens: `[batch, Ls, d]` student token embeddings.
    teacher_tokens: `[batch, Lt, d]` teacher token embeddings (same `d`).
    student_mask: `[batch, Ls]` true for real tokens; all true if omitted.
    teacher_mask: `[batch, Lt]` likewise.
    student_weights: optional `[batch, Ls]` non-negative token weights (e.g. idf),
      normalised over unmasked tokens; uniform if omitted.
    teacher_weights: optional `[batch, Lt]` likewise.
    cost: `"cosine"` (1 - cos) or `"sqeuclidean"`.
    epsilon: entropic regularisation, in the units of the cost.
    max_iterations: Sinkhorn iteration cap.
    threshold: stop when the marginal error (L1) falls below it.
    gradient: `"stop_gradient"`, `"implicit"` or `"unroll"`, see above.
    center: subtract the batch's mean real teacher token (held constant) from both sides
      before the cost, so that moving every student token towards the teacher's shared
      direction (anisotropy) no longer lowers the cost. Couples the examples of a batch.
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
  student_tokens, teacher_tokens, student_mask, teacher_mask = _token_inputs(
      student_tokens, teacher_tokens, student_mask, teacher_mask)
  pad_weight = _IMPLICIT_PADDING_WEIGHT if gradient == "implicit" else 0.0
  a = _marginal("student_weights", student_mask, student_weights, pad_weight)
  b = _marginal("teacher_weights", teacher_mask, teacher_weights, pad_weight)
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
  # The identity preconditioner keeps the system symmetric (solved by CG, not NormalCG, which
  # squares its condition number): ott's default eps*log one failed, the solver returning
  # NaN, at epsilon <= 0.01 (and 0.02 for some inputs) on [2, 6, 8] x [2, 7, 8] cosine costs.
  implicit_diff = (implicit_differentiation.ImplicitDiff(solver_kwargs=_IMPLICIT_KW)
                   if gradient == "implicit" else None)
  solver = sinkhorn.Sinkhorn(
      threshold=threshold, max_iterations=max_iterations, implicit_diff=implicit_diff,
      use_danskin=gradient != "unroll")

  def solve(cost_matrix, a_i, b_i):
    geom = geometry.Geometry(cost_matrix=cost_matrix, epsilon=epsilon)
    out = solver(linear_problem.LinearProblem(geom, a=a_i, b=b_i))
    return out.matrix, out.converged, out.n_iters

  solve_costs = jax.lax.stop_gradient(costs) if gradient == "stop_gradient" else costs
  plan, converged, iterations = jax.vmap(solve)(solve_costs, a, b)
  plan = jnp.where(student_mask[:, :, None] & teacher_mask[:, None, :], plan, 0.0)
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
    temperature: softmax temperature :math:`\tau > 0`.
    symmetric: also score teacher rows against student columns, and average (needs
      `num_teachers == batch`).
    label_offset: index of student row 0's translation among the teacher rows.

  Returns:
    `[batch]` float32.

  >>> x = jnp.eye(3)
  >>> bool(jnp.all(contrastive_distillation_loss(x, x) < 1e-3))
  True
  """
  if not temperature > 0:
    raise ValueError(f"temperature must be positive, got {temperature}")
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


def dense_scores(queries: jax.Array, documents: jax.Array, *,
                 similarity: Literal["dot", "cosine"] = "dot") -> jax.Array:
  """Query-document scores `[num_queries, num_documents]` of pooled embeddings.

  Args:
    queries: `[Q, d]`.
    documents: `[D, d]`; score a large corpus chunk by chunk to bound memory.
    similarity: `"dot"` or `"cosine"`.

  >>> dense_scores(jnp.array([[1., 0.]]), jnp.array([[2., 0.], [0., 1.]]), similarity="cosine")
  Array([[1., 0.]], dtype=float32)
  """
  queries = _as_array("queries", queries, 2).astype(jnp.float32)
  documents = _as_array("documents", documents, 2).astype(jnp.float32)
  if queries.shape[1] != documents.shape[1]:
    raise ValueError(f"queries dim {queries.shape[1]} != documents dim {documents.shape[1]}")
  if similarity == "cosine":
    queries, documents = l2_normalize(queries), l2_normalize(documents)
  elif similarity != "dot":
    raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
  return queries @ documents.T


def maxsim_scores(query_tokens: jax.Array, query_mask: jax.Array, doc_tokens: jax.Array,
                  doc_mask: jax.Array, *, normalize: bool = True,
                  doc_chunk_size: int | None = None) -> jax.Array:
  r"""ColBERT late-interaction scores `[Q, D]`: :math:`\sum_i \max_j \langle q_i, d_j \rangle`.

  Sums, over the query's real tokens, the best similarity with any real document token.

  Args:
    query_tokens: `[Q, Lq, d]`.
    query_mask: `[Q, Lq]`.
    doc_tokens: `[D, Ld, d]`.
    doc_mask: `[D, Ld]`.
    normalize: L2-normalise tokens first (cosine similarities, as ColBERT does).
    doc_chunk_size: score this many documents at a time (bounds the `[Q, chunk, Lq, Ld]`
      intermediate); all at once if None.

  >>> q = jnp.array([[[1., 0.], [0., 1.]]]); d = jnp.array([[[1., 0.]], [[0., 2.]]])
  >>> maxsim_scores(q, jnp.ones((1, 2)), d, jnp.ones((2, 1)))
  Array([[1., 1.]], dtype=float32)
  """
  query_tokens = _as_array("query_tokens", query_tokens, 3).astype(jnp.float32)
  doc_tokens = _as_array("doc_tokens", doc_tokens, 3).astype(jnp.float32)
  query_mask = _as_array("query_mask", query_mask, 2).astype(bool)
  doc_mask = _as_array("doc_mask", doc_mask, 2).astype(bool)
  if query_mask.shape != query_tokens.shape[:2]:
    raise ValueError(f"query_mask must have shape {query_tokens.shape[:2]}, got "
                     f"{query_mask.shape}")
  if doc_mask.shape != doc_tokens.shape[:2]:
    raise ValueError(f"doc_mask must have shape {doc_tokens.shape[:2]}, got {doc_mask.shape}")
  if query_tokens.shape[2] != doc_tokens.shape[2]:
    raise ValueError(f"query_tokens dim {query_tokens.shape[2]} != doc_tokens dim "
                     f"{doc_tokens.shape[2]}")
  if normalize:
    query_tokens, doc_tokens = l2_normalize(query_tokens), l2_normalize(doc_tokens)

  def score_chunk(chunk):
    tokens, mask = chunk
    sims = jnp.einsum("qid,njd->qnij", query_tokens, tokens)
    sims = jnp.where(mask[None, :, None, :], sims, -jnp.inf)
    best = jnp.max(sims, axis=-1)
    best = jnp.where(jnp.isfinite(best), best, 0.0)  # documents with no real token
    return jnp.sum(jnp.where(query_mask[:, None, :], best, 0.0), axis=-1)  # [Q, n]

  num_docs = doc_tokens.shape[0]
  if doc_chunk_size is None or doc_chunk_size >= num_docs:
    return score_chunk((doc_tokens, doc_mask))
  pad = -num_docs % doc_chunk_size
  tokens = jnp.pad(doc_tokens, ((0, pad), (0, 0), (0, 0)))
  mask = jnp.pad(doc_mask, ((0, pad), (0, 0)))
  chunks = (tokens.reshape(-1, doc_chunk_size, *tokens.shape[1:]),
            mask.reshape(-1, doc_chunk_size, mask.shape[1]))
  scores = jax.lax.map(score_chunk, chunks)  # [chunks, Q, chunk]
  return jnp.moveaxis(scores, 0, 1).reshape(query_tokens.shape[0], -1)[:, :num_docs]
