"""The distillation pair: the frozen teacher, the trained student encoder, and the student's
projection into the teacher's space when their widths differ."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from optical_jax.config import ConfigError
from optical_jax.models.hf_checkpoint import load_encoder
from optical_jax.models.loaded import LoadedEncoder

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class DistillationModels:
  """What a run trains: `student` (and `projection`, a Flax `Dense` or None) learn to map
  into the space of the frozen `teacher`.

  Parameters are one tree, `{"encoder": ..., "projection": {"kernel", "bias"}}` (no
  projection when the widths agree), made by `init_params`.
  """

  teacher: LoadedEncoder
  student: LoadedEncoder
  projection: nn.Dense | None = None
  # Token ids left out of OT marginals when config.ot.include_special_tokens is false.
  student_special_ids: tuple[int, ...] = ()
  teacher_special_ids: tuple[int, ...] = ()

  def init_params(self, rng: jax.Array) -> dict:
    """The student's checkpoint weights, and the projection initialised from `rng`."""
    params = {"encoder": self.student.params}
    if self.projection is not None:
      width = self.student.config.hidden_size
      params["projection"] = self.projection.init(rng, jnp.zeros((1, width)))["params"]
    return params

  def student_tokens(self, params: Mapping[str, Any], input_ids: jax.Array,
                     attention_mask: jax.Array, *, deterministic: bool = True,
                     rngs: Mapping[str, jax.Array] | None = None) -> jax.Array:
    """Student token embeddings in the teacher's space, `[batch, length, teacher_hidden]`."""
    return student_token_fn(self.student.module, self.projection)(
        params, input_ids, attention_mask, deterministic=deterministic, rngs=rngs)


def student_token_fn(module: nn.Module, projection: nn.Dense | None):
  """`DistillationModels.student_tokens` as a function of the modules alone
  (`(params, input_ids, attention_mask) -> [batch, length, teacher_hidden]`): it holds no
  weights, so a program compiled from it and kept for later runs keeps none alive."""

  def tokens(params: Mapping[str, Any], input_ids: jax.Array, attention_mask: jax.Array, *,
             deterministic: bool = True,
             rngs: Mapping[str, jax.Array] | None = None) -> jax.Array:
    hidden = module.apply({"params": params["encoder"]}, input_ids, attention_mask, None,
                          deterministic=deterministic, rngs=rngs)
    if projection is not None:
      hidden = projection.apply({"params": params["projection"]}, hidden.astype(jnp.float32))
    return hidden

  return tokens


def projection_for(student_width: int, teacher_width: int) -> nn.Dense | None:
  """A learned linear map between the widths, or None when they agree."""
  if student_width == teacher_width:
    return None
  return nn.Dense(teacher_width, name="projection",
                  kernel_init=nn.initializers.normal(1.0 / math.sqrt(student_width)))


def checkpoint_of(model: ml_collections.ConfigDict, side: str) -> tuple[str, str]:
  """(checkpoint, hub commit) of `side` ("teacher" or "student") in a config's `model`
  section: the student's own checkpoint, or the teacher's it starts from."""
  if side == "student" and model.student:
    return model.student, model.get("student_revision", "")
  return model.teacher, model.get("teacher_revision", "")


def build_models(config: ml_collections.ConfigDict) -> DistillationModels:
  """Loads the teacher and the student: `model.student_init` (the initial student training
  prepared in its workdir, e.g. with an extended vocabulary), else `model.student`, else the
  teacher's checkpoint. In the teacher stage, the model being fine-tuned plays both parts.
  Only loads paths: what builds a student lives above (`optical_jax.training.student_init`).
  """
  m = config.model
  dtype = DTYPES[m.dtype]
  if (config.stage == "distill" and m.get("vocab_extension", 0)
      and not m.get("student_init", "")):
    raise ConfigError("config.model.vocab_extension: the extended student is prepared by "
                      "training into WORKDIR/student_init (optical_jax.training.student_init."
                      "prepare_student; train.py does it); evaluate a run with eval.py "
                      "--checkpoint WORKDIR")
  name, revision = checkpoint_of(m, "teacher")
  teacher = load_encoder(name, dtype=dtype, attention=m.attention, revision=revision)
  name, revision = ((m.student_init, "") if m.get("student_init", "") else
                    checkpoint_of(m, "student"))
  student = load_encoder(name, dtype=dtype, remat=m.remat, dropout=m.dropout,
                         attention=m.attention, revision=revision)
  if config.stage == "teacher":
    return DistillationModels(teacher=student, student=student)
  special = {}
  if config.loss.startswith("ot") and not config.ot.include_special_tokens:
    special = dict(student_special_ids=tuple(student.tokenizer.all_special_ids),
                   teacher_special_ids=tuple(teacher.tokenizer.all_special_ids))
  return DistillationModels(
      teacher=teacher, student=student,
      projection=projection_for(student.config.hidden_size, teacher.config.hidden_size),
      **special)
