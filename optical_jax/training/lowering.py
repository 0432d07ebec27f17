"""The train step as an accelerator receives it, without one: the run's models with random
(or shape-only) weights, the step's arguments as shapes on any mesh (an `AbstractMesh` of
devices that are not here included), and what a program exported with `jax.export` calls
outside XLA (custom calls, host callbacks).

`jax.export.export(fn, platforms=["tpu"])` lowers `fn` for a platform that is not present;
it refuses custom calls without a compatibility guarantee unless told otherwise
(`jax.export.DisabledSafetyCheck.custom_call`). benchmarks/accelerator.py and
tests/test_lowering.py build so.py's step with these.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import export
from jax.sharding import NamedSharding, PartitionSpec as P

from optical_jax.config import base_config
from optical_jax.models.encoder import Encoder, EncoderConfig
from optical_jax.models.loaded import LoadedEncoder
from optical_jax.models.student import DTYPES, DistillationModels, projection_for
from optical_jax.runtime.mesh import AXIS
from optical_jax.training.state import initial_state


def so_config(teacher: str = "", student: str = "", *, dtype: str = "bfloat16",
              batch: int = 256, length: int = 64):
  """configs/so.py's training settings (loss ot with idf marginals, the student on the
  document side, bfloat16, batch 256 of length 64) with checkpoints `teacher` and `student`
  (paths, or "" for `random_models`)."""
  c = base_config()
  c.model.teacher, c.model.student, c.model.dtype = teacher, student, dtype
  c.model.student_side, c.loss, c.ot.marginals = "document", "ot", "idf"
  c.data.max_length, c.train.batch_size = length, batch
  return c


# Host callbacks: a step that calls the host cannot be exported and waits for the host.
_CALLBACK = re.compile(r"callback", re.IGNORECASE)
_CUSTOM_CALL = re.compile(r"stablehlo\.custom_call @([\w$.-]+)")


def random_encoder(architecture: dict, config, *, student: bool, abstract: bool = True
                   ) -> LoadedEncoder:
  """An encoder of `architecture` (config.json fields) as `config.model` builds it (dtype,
  attention; the student's remat and dropout), its weights random, or only their shapes and
  dtypes where `abstract` (enough to lower, nothing allocated)."""
  m = config.model
  encoder_config = EncoderConfig.from_hf_dict(architecture, source="random")
  if student and m.dropout is not None:
    encoder_config = dataclasses.replace(encoder_config, hidden_dropout_prob=m.dropout,
                                         attention_probs_dropout_prob=m.dropout)
  module = Encoder(encoder_config, dtype=DTYPES[m.dtype], remat=bool(student and m.remat),
                   attention=m.attention)
  ids = jnp.ones((1, 2), jnp.int32)
  init = lambda rng: Encoder(encoder_config).init(rng, ids, ids)["params"]
  rng = jax.random.PRNGKey(0)
  params = jax.eval_shape(init, rng) if abstract else jax.jit(init)(rng)
  return LoadedEncoder(module=module, params=params, config=encoder_config,
                       path=Path("random"), hf_config=dict(architecture))


def random_models(config, teacher: dict, student: dict, *, abstract: bool = True
                  ) -> DistillationModels:
  """`DistillationModels` as `build_models(config)` makes them, from architectures instead of
  checkpoints (special tokens stay in OT marginals: there is no tokenizer)."""
  t = random_encoder(teacher, config, student=False, abstract=abstract)
  s = random_encoder(student, config, student=True, abstract=abstract)
  if config.stage == "teacher":
    return DistillationModels(teacher=s, student=s)
  return DistillationModels(teacher=t, student=s,
                            projection=projection_for(s.config.hidden_size,
                                                      t.config.hidden_size))


def step_batch_shapes(config, models: DistillationModels, batch: int, length: int,
                      *, teacher_tokens: bool = False) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch `make_train_step`'s step takes (`input_pipeline.local_batch`'s arrays):
  ids and masks, each side's token weights with idf marginals, the teacher's token
  embeddings where they come from the teacher token cache."""
  shape = lambda dtype, *extra: jax.ShapeDtypeStruct((batch, length, *extra), dtype)
  shapes = {f"{side}_{name}": shape(jnp.int32) for side in ("student", "teacher")
            for name in ("ids", "mask")}
  if config.stage == "distill" and config.ot.marginals == "idf":
    shapes |= {f"{side}_weights": shape(jnp.float32) for side in ("student", "teacher")}
  if teacher_tokens:
    shapes["teacher_tokens"] = shape(DTYPES[config.model.dtype],
                                     models.teacher.config.hidden_size)
  return shapes


def step_argument_shapes(config, models: DistillationModels, optimizer, mesh, batch: int,
                         length: int, *, teacher_tokens: bool = False) -> tuple:
  """`(state, teacher_params, batch, rng)` of `make_train_step(config, models, optimizer,
  mesh)` as `jax.ShapeDtypeStruct`s with their shardings on `mesh` (a `Mesh` or an
  `AbstractMesh`): replicated, the batch split over `AXIS`."""
  with_sharding = lambda tree, spec: jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec)), tree)
  state = jax.eval_shape(lambda: initial_state(models, optimizer,
                                               trainable=config.train.trainable))
  return (with_sharding(state, P()), with_sharding(models.teacher.params, P()),
          with_sharding(step_batch_shapes(config, models, batch, length,
                                          teacher_tokens=teacher_tokens), P(AXIS)),
          with_sharding(jax.eval_shape(lambda: jax.random.PRNGKey(0)), P()))


# Custom calls XLA implements itself on every platform (JAX before 0.7 writes shardings and
# top_k this way), with jax.export's compatibility guarantee.
XLA_CUSTOM_CALLS = frozenset({"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape",
                              "mhlo.topk"})


def custom_call_targets(exported: export.Exported) -> set[str]:
  """The custom-call targets in an exported program, those XLA implements itself left out:
  work XLA hands to a library (cuDNN) or the host."""
  return set(_CUSTOM_CALL.findall(exported.mlir_module())) - XLA_CUSTOM_CALLS


def host_callbacks(exported: export.Exported) -> set[str]:
  """The custom calls of an exported program that call back into Python on the host."""
  return {t for t in custom_call_targets(exported) if _CALLBACK.search(t)}
