"""What each stage minimises: the function of each term a `config.loss` adds up (the losses
and their terms are declared in `optical_jax.config.LOSS_TABLE`), and the teacher stage's
loss. Every function here runs per device inside the data-parallel step and returns
per-example values `[batch]`; in-batch negatives are gathered across all devices (axis
`AXIS`), so a run on many devices sees the negatives one device would.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from optical_jax.config import loss_terms
from optical_jax.losses import (contrastive_distillation_loss, maxsim_contrastive_loss,
                                mse_distillation_loss, ot_distillation_loss, weighted_sum)
from optical_jax.models.student import DistillationModels
from optical_jax.pooling import pool
from optical_jax.runtime.mesh import AXIS



def gathered_contrastive(queries: jax.Array, keys: jax.Array, *, temperature: float,
                         extra_keys: tuple[jax.Array, ...] = ()) -> jax.Array:
  """InfoNCE of this device's `queries` `[b, d]` against the keys of every device (row k's
  positive is this device's key k), plus `extra_keys` (hard negatives, also gathered)."""
  all_keys = [jax.lax.all_gather(k, AXIS, tiled=True) for k in (keys, *extra_keys)]
  offset = jax.lax.axis_index(AXIS) * queries.shape[0]
  return contrastive_distillation_loss(queries, jnp.concatenate(all_keys),
                                       temperature=temperature, label_offset=offset)


def _special_token_mask(ids: jax.Array, special_ids: tuple[int, ...]) -> jax.Array:
  if not special_ids:
    return jnp.ones_like(ids, bool)
  return ~jnp.isin(ids, jnp.asarray(special_ids, jnp.int32))


def ot_term(config, models: DistillationModels, student, teacher):
  """OPTICAL's token-level OT loss; diagnostics: Sinkhorn iterations and convergence."""
  s_mask, t_mask = student["mask"].astype(bool), teacher["mask"].astype(bool)
  if not config.ot.include_special_tokens:
    s_mask &= _special_token_mask(student["ids"], models.student_special_ids)
    t_mask &= _special_token_mask(teacher["ids"], models.teacher_special_ids)
  o = config.ot
  loss, diag = ot_distillation_loss(
      student["tokens"], teacher["tokens"], s_mask, t_mask,
      student_weights=student.get("weights"), teacher_weights=teacher.get("weights"),
      cost=o.cost, epsilon=o.epsilon,
      max_iterations=o.max_iterations, threshold=o.threshold, gradient=o.gradient,
      center=o.center, tau_a=o.tau_student, tau_b=o.tau_teacher, return_diagnostics=True)
  return loss, {"ot_iterations": jnp.mean(diag.iterations.astype(jnp.float32)),
                "ot_converged": jnp.mean(diag.converged.astype(jnp.float32))}


def _pooled(models: DistillationModels, student, teacher):
  return (pool(student["tokens"], student["mask"], method=models.student.pooling),
          pool(teacher["tokens"], teacher["mask"], method=models.teacher.pooling))


def mse_term(config, models, student, teacher):
  """Sentence-level distillation: MSE of pooled embeddings."""
  return mse_distillation_loss(*_pooled(models, student, teacher)), {}


def contrastive_term(config, models, student, teacher):
  """In-batch translation retrieval: each student sentence finds its teacher translation
  among the global batch's."""
  student_pooled, teacher_pooled = _pooled(models, student, teacher)
  return gathered_contrastive(student_pooled, teacher_pooled,
                              temperature=config.contrastive.temperature), {}


def maxsim_term(config, models, student, teacher):
  """In-batch translation retrieval by MaxSim: each student sentence's tokens find its
  translation's teacher tokens among the global batch's (late interaction, as MaxSim reranking
  scores the teacher's passage tokens)."""
  teachers, teacher_masks = (jax.lax.all_gather(x, AXIS, tiled=True)
                             for x in (teacher["tokens"], teacher["mask"].astype(bool)))
  offset = jax.lax.axis_index(AXIS) * student["tokens"].shape[0]
  return maxsim_contrastive_loss(student["tokens"], teachers, student["mask"].astype(bool),
                                 teacher_masks, temperature=config.maxsim.temperature,
                                 label_offset=offset), {}


# Each term's function, by the name a loss gives it (`optical_jax.config.LOSS_TABLE`, where a
# loss declares its terms and whether it splits into microbatches).
TERMS: dict[str, Callable] = {"ot": ot_term, "mse": mse_term, "contrastive": contrastive_term,
                              "maxsim": maxsim_term}


def term_weight(config, name: str):
  """`config.<name>.weight` where the term's config group declares one (contrastive, maxsim),
  else 1."""
  group = config.get(name)
  return 1.0 if group is None else group.get("weight", 1.0)


def distillation_loss(config, models: DistillationModels, student: dict, teacher: dict):
  """Per-example loss `[batch]` of `config.loss` and its diagnostics.

  `student` and `teacher` hold `tokens` `[batch, length, dim]`, `ids` and `mask`, and
  optionally `weights` `[batch, length]`, the OT marginals' token weights (`ot.marginals`).
  """
  terms, aux = {}, {}
  for name in loss_terms(config.loss):
    terms[name], diagnostics = TERMS[name](config, models, student, teacher)
    aux.update(diagnostics)
    aux[f"loss_{name}"] = jnp.mean(terms[name])
  weights = {name: term_weight(config, name) for name in terms}
  return weighted_sum(terms, weights), aux


def teacher_stage_loss(config, encode: Callable[[str], jax.Array], batch: dict):
  """InfoNCE for (query, positive[, negative]) triples, negatives from every device.

  `encode(name)` gives the normalised pooled embeddings of the batch's `name` column.
  """
  negatives = (encode("negative"),) if "negative_ids" in batch else ()
  return gathered_contrastive(encode("query"), encode("positive"), extra_keys=negatives,
                              temperature=config.contrastive.temperature), {}
