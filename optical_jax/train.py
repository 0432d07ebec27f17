"""Training: OPTICAL distillation (and the English teacher stage) with pmap, Optax and Orbax.

`train_and_evaluate(config, workdir)` is what `train.py` calls. Stages (`config.stage`):

- `distill` (the paper): a frozen teacher encodes the English side of each bitext pair, the
  student encodes the low-resource side, and the student learns to match the teacher's
  token embeddings (`ot`), pooled embeddings (`mse`), in-batch translation retrieval
  (`contrastive`) or `ot+contrastive`.
- `teacher`: fine-tunes an English retrieval model on (query, positive[, negative]) triples
  with in-batch negatives, the first half of the paper's pipeline.

Data parallelism is `jax.pmap` over all local devices with gradients averaged by
`lax.pmean`; checkpoints are Orbax's, and a run restarted in the same workdir resumes from
its latest checkpoint and sees the same batches.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from optical_jax import data as data_lib
from optical_jax import host_memory
from optical_jax.evaluation import (DEFAULT_MEASURES, TextEncoder, evaluate, evaluate_per_query,
                                    format_table, read_corpus, read_qrels, read_topics, retrieve,
                                    write_run)
from optical_jax.hf_checkpoint import LoadedEncoder, load_encoder
from optical_jax.losses import (contrastive_distillation_loss, mse_distillation_loss,
                                ot_distillation_loss)
from optical_jax.modeling import check_attention
from optical_jax.pooling import pool
from optical_jax.shapes import check_buckets
from optical_jax.teacher_cache import TeacherTokenCache

log = logging.getLogger("optical_jax")
AXIS = "batch"
LOSSES = ("ot", "mse", "contrastive", "ot+contrastive")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainingError(RuntimeError):
  """A run that cannot go on; the message says why and what was kept."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


# ---------------------------------------------------------------------------------------
# Models


@dataclasses.dataclass
class Models:
  """The frozen teacher, the trained encoder, and how the trained encoder's tokens are made."""

  teacher: LoadedEncoder
  student: LoadedEncoder
  projection: bool  # a learned linear map from the student's hidden size to the teacher's
  # Token ids left out of OT marginals when config.ot.include_special_tokens is false.
  student_special_ids: tuple[int, ...] = ()
  teacher_special_ids: tuple[int, ...] = ()

  def init_params(self) -> dict:
    params = {"encoder": self.student.params}
    if self.projection:
      d_in, d_out = self.student.config.hidden_size, self.teacher.config.hidden_size
      kernel = jax.random.normal(jax.random.PRNGKey(0), (d_in, d_out)) / math.sqrt(d_in)
      params["projection"] = {"kernel": kernel, "bias": jnp.zeros((d_out,))}
    return params

  def student_tokens(self, params, input_ids, attention_mask, *, deterministic=True,
                     rngs=None) -> jax.Array:
    """Student token embeddings in the teacher's space, `[batch, length, teacher_hidden]`."""
    hidden = self.student.apply(params["encoder"], input_ids, attention_mask,
                                deterministic=deterministic, rngs=rngs)
    if "projection" in params:
      hidden = hidden.astype(jnp.float32) @ params["projection"]["kernel"] + params[
          "projection"]["bias"]
    return hidden


def trainable_subtree(params: dict, pattern: str) -> dict:
  """The parameters whose `/`-joined path (`encoder/layer_0/output_dense/kernel`) matches the
  regular expression `pattern` (anywhere in the path), as a nested dict; all for ''."""
  if not pattern:
    return params
  flat = flax.traverse_util.flatten_dict(params)
  selected = {k: v for k, v in flat.items() if re.search(pattern, "/".join(k))}
  if not selected:
    raise TrainingError(f"config.trainable {pattern!r} matches no parameter; paths look like "
                        f"{'/'.join(next(iter(flat)))}")
  return flax.traverse_util.unflatten_dict(selected)


def merge_trainable(params: dict, trainable: dict) -> dict:
  """`params` with the leaves of its sub-tree `trainable` replaced."""
  if trainable is params:
    return params
  flat = flax.traverse_util.flatten_dict(params)
  flat.update(flax.traverse_util.flatten_dict(trainable))
  return flax.traverse_util.unflatten_dict(flat)


def initial_state(models: Models, optimizer: optax.GradientTransformation,
                  trainable: str = "") -> TrainState:
  """Step 0; the optimizer state covers only the parameters matching `trainable`."""
  params = models.init_params()
  return TrainState(step=jnp.array(0, jnp.int32), params=params,
                    opt_state=optimizer.init(trainable_subtree(params, trainable)))


def build_models(config: ml_collections.ConfigDict) -> Models:
  dtype = DTYPES[config.dtype]
  teacher = load_encoder(config.teacher, dtype=dtype, attention=config.attention)
  student_source = config.student or config.teacher
  student = load_encoder(student_source, dtype=dtype, remat=config.remat,
                         dropout=config.dropout, attention=config.attention)
  if config.stage == "teacher":
    return Models(teacher=student, student=student, projection=False)
  special = {}
  if config.loss in ("ot", "ot+contrastive") and not config.ot.include_special_tokens:
    special = dict(student_special_ids=tuple(student.tokenizer.all_special_ids),
                   teacher_special_ids=tuple(teacher.tokenizer.all_special_ids))
  return Models(teacher=teacher, student=student,
                projection=student.config.hidden_size != teacher.config.hidden_size, **special)


# ---------------------------------------------------------------------------------------
# Losses and the train step


def _special_token_mask(ids: jax.Array, special_ids: tuple[int, ...]) -> jax.Array:
  return ~jnp.isin(ids, jnp.asarray(special_ids, jnp.int32)) if special_ids else jnp.ones_like(
      ids, bool)


def distillation_loss(config, models: Models, student_tokens, student_ids, student_mask,
                      teacher_tokens, teacher_ids, teacher_mask):
  """Per-example loss `[batch]` and diagnostics for `config.loss`.

  For the contrastive term, the teacher's pooled embeddings of the whole global batch are
  gathered across devices (they are frozen), so every device sees the same negatives as a
  single device would.
  """
  terms, aux = {}, {}
  if config.loss in ("ot", "ot+contrastive"):
    s_mask, t_mask = student_mask.astype(bool), teacher_mask.astype(bool)
    if not config.ot.include_special_tokens:
      s_mask &= _special_token_mask(student_ids, models.student_special_ids)
      t_mask &= _special_token_mask(teacher_ids, models.teacher_special_ids)
    terms["ot"], diag = ot_distillation_loss(
        student_tokens, teacher_tokens, s_mask, t_mask, cost=config.ot.cost,
        epsilon=config.ot.epsilon, max_iterations=config.ot.max_iterations,
        threshold=config.ot.threshold, gradient=config.ot.gradient, center=config.ot.center,
        return_diagnostics=True)
    aux["ot_iterations"] = jnp.mean(diag.iterations.astype(jnp.float32))
    aux["ot_converged"] = jnp.mean(diag.converged.astype(jnp.float32))
  if config.loss in ("mse", "contrastive", "ot+contrastive"):
    student_pooled = pool(student_tokens, student_mask, method=models.student.pooling)
    teacher_pooled = pool(teacher_tokens, teacher_mask, method=models.teacher.pooling)
    if config.loss == "mse":
      terms["mse"] = mse_distillation_loss(student_pooled, teacher_pooled)
    else:
      all_teachers = jax.lax.all_gather(teacher_pooled, AXIS, tiled=True)
      offset = jax.lax.axis_index(AXIS) * student_pooled.shape[0]
      terms["contrastive"] = contrastive_distillation_loss(
          student_pooled, all_teachers, temperature=config.contrastive.temperature,
          label_offset=offset)
  for name, value in terms.items():
    aux[f"loss_{name}"] = jnp.mean(value)
  weights = {"ot": 1.0, "mse": 1.0, "contrastive": config.contrastive.weight}
  per_example = sum(weights[name] * value for name, value in terms.items())
  return per_example, aux


def teacher_stage_loss(config, models: Models, params, batch, rngs, deterministic):
  """In-batch-negative InfoNCE for (query, positive[, negative]) triples."""
  encode = lambda name: pool(
      models.student_tokens(params, batch[f"{name}_ids"], batch[f"{name}_mask"],
                            deterministic=deterministic, rngs=rngs),
      batch[f"{name}_mask"], method=models.student.pooling, normalize=True)
  queries = encode("query")
  passages = [encode("positive")] + ([encode("negative")] if "negative_ids" in batch else [])
  logits = queries @ jnp.concatenate(passages).T / config.contrastive.temperature
  labels = jnp.arange(queries.shape[0])
  return -jax.nn.log_softmax(logits, axis=-1)[labels, labels], {}


def make_optimizer(config) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
      decay_steps=max(config.num_train_steps, config.warmup_steps + 1),
      end_value=config.learning_rate * config.final_lr_fraction)

  def decay_mask(params):  # no weight decay on biases and LayerNorm parameters
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(getattr(k, "key", "") in ("bias", "scale") for k in path), params)

  return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm),
                     optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask))


def make_train_step(config, models: Models, optimizer):
  """The pmapped step: `(state, teacher_params, batch, rng) -> (state, metrics)`."""
  deterministic = not config.dropout

  def step(state: TrainState, teacher_params, batch, rng):
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(AXIS))

    def loss_fn(trainable, batch, rng):
      rngs = None if deterministic else {"dropout": rng}
      params = merge_trainable(state.params, trainable)
      if config.stage == "teacher":
        per_example, aux = teacher_stage_loss(config, models, params, batch, rngs, deterministic)
      else:
        if "teacher_tokens" in batch:  # from the TeacherTokenCache
          teacher_tokens = batch["teacher_tokens"]
        else:
          teacher_tokens = jax.lax.stop_gradient(models.teacher.apply(
              teacher_params, batch["teacher_ids"], batch["teacher_mask"]))
        student_tokens = models.student_tokens(params, batch["student_ids"],
                                               batch["student_mask"],
                                               deterministic=deterministic, rngs=rngs)
        per_example, aux = distillation_loss(
            config, models, student_tokens, batch["student_ids"], batch["student_mask"],
            teacher_tokens, batch["teacher_ids"], batch["teacher_mask"])
      return jnp.mean(per_example), aux

    # Gradients of the trainable parameters only: frozen ones are constants here, so XLA
    # drops their weight-gradient matmuls instead of computing and discarding them.
    trainable = trainable_subtree(state.params, config.trainable)
    gradient = jax.value_and_grad(loss_fn, has_aux=True)
    chunks = microbatches_per_device(config, jax.tree_util.tree_leaves(batch)[0].shape[0])
    if chunks == 1:
      (loss, aux), grads = gradient(trainable, batch, rng)
    else:
      # Equal chunks, so the mean of their mean losses (and gradients) is the batch's.
      split = jax.tree_util.tree_map(lambda x: x.reshape(chunks, -1, *x.shape[1:]), batch)

      def accumulate(total, chunk):
        index, micro_batch = chunk
        return jax.tree_util.tree_map(
            jnp.add, total, gradient(trainable, micro_batch, jax.random.fold_in(rng, index))), None

      first = jax.tree_util.tree_map(lambda x: x[0], split)
      zeros = jax.tree_util.tree_map(
          lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(gradient, trainable, first, rng))
      total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(chunks), split))
      (loss, aux), grads = jax.tree_util.tree_map(lambda x: x / chunks, total)
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
    params = merge_trainable(state.params, optax.apply_updates(trainable, updates))
    metrics = jax.lax.pmean({"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}, AXIS)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return jax.pmap(step, axis_name=AXIS, donate_argnums=(0,))


def microbatches_per_device(config, per_device_batch: int) -> int:
  """How many chunks the step splits each device's batch into: a ValueError naming
  `config.microbatch_size` unless it is 0 (off) or a positive integer dividing the batch."""
  size = config.microbatch_size
  splits = isinstance(size, int) and 0 < size < per_device_batch
  if not isinstance(size, int) or isinstance(size, bool) or size < 0 or (
      splits and per_device_batch % size):
    raise ValueError(f"config.microbatch_size must be 0 (off) or a positive integer that "
                     f"divides the per-device batch {per_device_batch}, got {size!r}")
  return per_device_batch // size if splits else 1


# XLA compiler options for the train step on CPU, by config.xla_cpu_schedule.
CPU_SCHEDULES = {
    "memory": {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"},
    "default": {},
}


def step_compiler_options(config) -> dict[str, str]:
  """The XLA options the train step compiles with: `config.xla_cpu_schedule` on CPU."""
  return CPU_SCHEDULES[config.xla_cpu_schedule] if jax.default_backend() == "cpu" else {}


def compiled_per_shape(step_fn, compiler_options: Mapping[str, str]):
  """`step_fn(state, teacher_params, batch, rng)`, a pmapped function, compiled ahead of time
  once per batch shape with XLA `compiler_options` (a pmapped call cannot take them). An XLA
  that does not know an option gets a warning and compiles without the options. The result's
  `.executable_for(...)` (same arguments) gives the executable a call would use."""
  executables = {}

  def executable_for(state, teacher_params, batch, rng):
    nonlocal compiler_options
    key = tuple(sorted((name, np.shape(array)) for name, array in batch.items()))
    if key not in executables:
      lowered = step_fn.lower(state, teacher_params, batch, rng)
      try:
        executables[key] = lowered.compile(dict(compiler_options))
      except RuntimeError as e:
        if not compiler_options:
          raise
        log.warning("this XLA rejects the train step's compiler options %s (%s); compiling "
                    "without them", dict(compiler_options), e)
        compiler_options = {}
        executables[key] = lowered.compile()
    return executables[key]

  def call(state, teacher_params, batch, rng):
    return executable_for(state, teacher_params, batch, rng)(state, teacher_params, batch, rng)

  call.executable_for = executable_for
  call.executables = executables  # by batch shape: what was compiled, memory_analysis()
  return call


# ---------------------------------------------------------------------------------------
# Data


def load_training_rows(config) -> list[tuple[str, ...]]:
  fields = (("query", "positive", "negative") if config.stage == "teacher"
            else ("student", "teacher"))
  d = config.data
  if d.train_file:
    path = Path(d.train_file).expanduser()
    if not path.is_file():
      raise TrainingError(f"config.data.train_file: {path} does not exist. {d.get('how_to_get', '')}")
    if config.stage == "teacher":
      try:
        rows = data_lib.read_pairs(path, fields)
      except data_lib.DataFormatError:
        rows = data_lib.read_pairs(path, fields[:2])
    else:
      rows = data_lib.read_pairs(path, (d.student_field, d.teacher_field))
  elif d.hf_dataset:
    names = (d.student_field, d.teacher_field) if config.stage != "teacher" else fields
    rows = data_lib.read_hf_dataset(d.hf_dataset, names, config=d.hf_config, split=d.hf_split,
                                    limit=d.limit)
  else:
    raise TrainingError("config.data: set train_file (TSV/JSONL) or hf_dataset")
  return rows[:d.limit] if d.limit else rows


def make_batches(config, models: Models, rows, workdir: Path) -> data_lib.BucketedBatches:
  if config.stage == "teacher":
    names = ("query", "positive", "negative")[:len(rows[0])]
    tokenizers = {name: models.student for name in names}
  else:
    names = ("student", "teacher")
    tokenizers = {"student": models.student, "teacher": models.teacher}
  columns, pad_ids = {}, {}
  for col, name in enumerate(names):
    encoder = tokenizers[name]
    columns[name] = data_lib.tokenize_cached(
        encoder.tokenizer, [r[col] for r in rows], max_length=config.data.max_length,
        cache_dir=workdir / "cache", tag=f"{encoder.path}:{name}")
    pad_ids[name] = encoder.config.pad_token_id
  return data_lib.BucketedBatches(columns, pad_ids, batch_size=config.batch_size,
                                  max_length=config.data.max_length, seed=config.seed,
                                  length_buckets=config.data.length_buckets)


def replicate(tree):
  """A copy of `tree` on every local device, laid out exactly as pmap lays out its outputs
  (an identity pmap makes it), so the step compiles once, not again when its outputs come
  back as inputs."""
  devices = jax.local_device_count()
  stacked = jax.tree_util.tree_map(lambda x: np.stack([np.asarray(x)] * devices), tree)
  return jax.pmap(lambda x: x)(stacked)


def shard(batch: Mapping[str, np.ndarray], devices: int) -> dict[str, np.ndarray]:
  return {k: v.reshape(devices, v.shape[0] // devices, *v.shape[1:]) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------
# Evaluation during and after training


def collection_specs(config) -> list[ml_collections.ConfigDict]:
  specs = [ml_collections.ConfigDict(dict(s)) if isinstance(s, Mapping) else s
           for s in config.eval.collections]
  for spec in specs:
    for field in ("topics", "corpus", "qrels"):
      path = Path(spec[field]).expanduser()
      if not path.is_file():
        raise TrainingError(f"config.eval.collections[{spec.name!r}].{field}: {path} does not "
                            f"exist. {spec.get('how_to_get', '')}")
  return specs


def teacher_encoder(encoder: LoadedEncoder, config) -> TextEncoder:
  """The frozen teacher's text encoder; its embeddings are cached across runs."""
  return TextEncoder(encoder, max_length=config.eval.max_length,
                     batch_size=config.eval.batch_size,
                     cache_dir=Path(config.cache_dir).expanduser() / "embeddings")


def side_encoders(models: Models, params, config) -> dict[str, TextEncoder]:
  """The encoders of both sides; build once and update `["student"].params` as training
  goes, so evaluation compiles once."""
  return {
      "teacher": teacher_encoder(models.teacher, config),
      "student": TextEncoder(models.student, params=params, max_length=config.eval.max_length,
                             batch_size=config.eval.batch_size,
                             token_fn=lambda p, ids, mask: models.student_tokens(p, ids, mask)),
  }


def evaluate_collection(spec, encoders: Mapping[str, TextEncoder], *,
                        measures=DEFAULT_MEASURES, k: int = 100,
                        progress: bool = True) -> tuple[dict, dict, dict]:
  """(aggregate metrics, per-query metrics, run) of one collection."""
  for side in (spec.query_encoder, spec.doc_encoder):
    if side not in encoders:
      raise TrainingError(f"collection {spec.name!r}: encoder must be 'student' or 'teacher', "
                          f"got {side!r}")
  topics = read_topics(spec.topics)
  qrels = read_qrels(spec.qrels, topics=topics)
  corpus = read_corpus(spec.corpus)
  if spec.get("max_queries"):
    topics = {q: topics[q] for q in list(topics)[:spec.max_queries]}
    qrels = {q: qrels[q] for q in topics if q in qrels}
  run = retrieve(topics, corpus, query_encoder=encoders[spec.query_encoder],
                 doc_encoder=encoders[spec.doc_encoder], k=k, progress=progress)
  return evaluate(run, qrels, measures), evaluate_per_query(run, qrels, measures), run


# ---------------------------------------------------------------------------------------
# Logging and checkpoints


class MetricsLog:
  """Metrics as JSON lines and TensorBoard events; on resume, later records are dropped."""

  def __init__(self, workdir: Path, resume_step: int):
    self.path = workdir / "metrics.jsonl"
    kept = []
    if self.path.is_file():
      kept = [line for line in self.path.read_text().splitlines()
              if line.strip() and json.loads(line)["step"] <= resume_step]
    self.path.write_text("".join(line + "\n" for line in kept))
    from tensorboardX import SummaryWriter
    self.writer = SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1)

  def write(self, step: int, values: Mapping[str, float]) -> None:
    record = {"step": int(step), **{k: float(v) for k, v in values.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in values.items():
      self.writer.add_scalar(key, float(value), int(step))
    self.writer.flush()

  def records(self) -> list[dict]:
    return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict], path: Path, title: str = "") -> Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 3.8))
  losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
  maps = [(r["step"], r["dev_MAP"]) for r in records if "dev_MAP" in r]
  if losses:
    ax_loss.plot(*zip(*losses), lw=1)
  ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
  if maps:
    ax_map.plot(*zip(*maps), marker="o")
  ax_map.set(xlabel="step", ylabel="MAP", title="dev MAP")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def checkpoint_managers(workdir: Path, keep: int):
  import orbax.checkpoint as ocp
  latest = ocp.CheckpointManager(
      workdir / "checkpoints", options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
  best = ocp.CheckpointManager(
      workdir / "best", options=ocp.CheckpointManagerOptions(
          max_to_keep=1, best_fn=lambda m: m["dev_MAP"], best_mode="max", create=True))
  return latest, best


def _save(manager, step: int, tree, metrics=None) -> None:
  """Saves device 0's copy of a replicated tree (the train state, or params alone)."""
  import orbax.checkpoint as ocp
  host_tree = jax.device_get(jax.tree_util.tree_map(lambda x: x[0], tree))
  manager.save(step, args=ocp.args.StandardSave(host_tree), metrics=metrics, force=True)


def restore_state(manager, template: TrainState, step: int | None = None) -> TrainState:
  import orbax.checkpoint as ocp
  step = manager.latest_step() if step is None else step
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


# ---------------------------------------------------------------------------------------
# The loop


def _validate(config) -> None:
  if config.stage not in ("distill", "teacher"):
    raise TrainingError(f"config.stage must be 'distill' or 'teacher', got {config.stage!r}")
  if config.loss not in LOSSES:
    raise TrainingError(f"config.loss must be one of {LOSSES}, got {config.loss!r}")
  if config.dtype not in DTYPES:
    raise TrainingError(f"config.dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
  if config.student_side not in ("query", "document"):
    raise TrainingError(f"config.student_side must be 'query' or 'document', got "
                        f"{config.student_side!r}")
  if config.xla_cpu_schedule not in CPU_SCHEDULES:
    raise TrainingError(f"config.xla_cpu_schedule must be one of {sorted(CPU_SCHEDULES)}, got "
                        f"{config.xla_cpu_schedule!r}")
  devices = jax.local_device_count()
  if config.batch_size % devices:
    raise TrainingError(f"config.batch_size {config.batch_size} is not divisible by the "
                        f"{devices} local devices")
  try:  # the shared checks, which raise ValueError naming their config field
    check_attention(config.attention, DTYPES[config.dtype], jax.default_backend())
    host_memory.check(config.host_memory)  # applied by train.py, before JAX starts threads
    check_buckets(config.data.length_buckets, "config.data.length_buckets")
    microbatches = microbatches_per_device(config, config.batch_size // devices)
  except ValueError as e:
    raise TrainingError(str(e)) from None
  # In-batch negatives and the batch's mean teacher token would change with the split.
  if microbatches > 1 and (config.stage == "teacher" or config.ot.center
                           or config.loss in ("contrastive", "ot+contrastive")):
    raise TrainingError("config.microbatch_size cannot split batches for the contrastive "
                        "losses, the teacher stage and ot.center: their per-example loss "
                        "depends on the whole batch")


def _check_lengths(config, models: Models) -> None:
  """Token limits within what both encoders have position embeddings for."""
  for field in ("data", "eval"):
    limit = config[field].max_length
    for side, encoder in (("teacher", models.teacher), ("student", models.student)):
      if limit > encoder.config.max_length:
        raise TrainingError(f"config.{field}.max_length {limit} is longer than the "
                            f"{encoder.config.max_length} tokens the {side} ({encoder.path}) "
                            "has position embeddings for")


def resolve_assets(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with offline asset references (`pypi:`, `bible:`) made paths."""
  from optical_jax.assets import resolve
  config = ml_collections.ConfigDict(config.to_dict())
  r = lambda value: resolve(value, config.cache_dir) if value else value
  config.teacher, config.student = r(config.teacher), r(config.student)
  config.data.train_file = r(config.data.train_file)
  for spec in config.eval.collections:
    for field in ("topics", "corpus", "qrels"):
      spec[field] = r(spec[field])
  return config


def enable_compilation_cache(config: ml_collections.ConfigDict) -> None:
  """Keeps compiled XLA programs in `cache_dir/xla`, so a rerun, a resumed run or another run
  with the same shapes (the demo's evaluations) loads them instead of compiling again."""
  if config.compilation_cache:
    jax.config.update("jax_compilation_cache_dir",
                      str(Path(config.cache_dir).expanduser() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run(config: ml_collections.ConfigDict, workdir: str | Path | None) -> dict:
  """What `train.py` runs: the demo, or one training run."""
  enable_compilation_cache(config)
  if config.get("demo") and config.demo.enabled:
    from optical_jax.demo import run_demo
    return run_demo(config, workdir or "runs/demo")
  if workdir is None:
    raise TrainingError("--workdir is required")
  return train_and_evaluate(config, workdir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """Trains per `config` in `workdir`, resuming from its latest checkpoint; returns the final
  evaluation `{collection: {measure: value}}` (empty when no collections are configured)."""
  if (config.host_memory == "retain" and host_memory.missing_retain()
      and jax.default_backend() == "cpu"):
    log.warning("config.host_memory 'retain' is not in effect: it must be applied before JAX's "
                "first computation, as train.py does; in a notebook, call "
                "optical_jax.host_memory.configure('retain') first thing (on CPU it made a "
                "train step 12-17%% faster)")
  _validate(config)
  config = resolve_assets(config)
  workdir = Path(workdir).expanduser().resolve()  # Orbax needs absolute paths
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
  specs = collection_specs(config)
  dev_spec = next((s for s in specs if s.name == config.eval.dev_collection), None)
  rows = load_training_rows(config)

  models = build_models(config)
  _check_lengths(config, models)
  batches = make_batches(config, models, rows, workdir)
  devices = jax.local_device_count()
  log.info("%d training examples, %d steps per epoch, %d device(s), batch shapes %s "
           "(at most %d compilations)", batches.num_examples, batches.steps_per_epoch, devices,
           batches.shapes, len(batches.shapes))

  teacher_cache = None
  if config.stage == "distill" and config.teacher_cache:
    teacher_cache = TeacherTokenCache(models.teacher, batches.columns["teacher"],
                                      Path(config.cache_dir) / "teacher_tokens")

  optimizer = make_optimizer(config)
  state = initial_state(models, optimizer, config.trainable)
  latest, best = checkpoint_managers(workdir, config.keep_checkpoints)
  start = 0
  if latest.latest_step() is not None:
    state = restore_state(latest, state)
    start = int(state.step)
    print(f"resumed from step {start} ({workdir / 'checkpoints'})", flush=True)
  metrics_log = MetricsLog(workdir, start)
  state = replicate(state)
  teacher_params = replicate(models.teacher.params)
  step_fn = compiled_per_shape(make_train_step(config, models, optimizer),
                               step_compiler_options(config))
  rng = replicate(jax.random.PRNGKey(config.seed))

  encoders = side_encoders(models, state.params, config)

  final_dev = {}  # the dev evaluation of the last step, reused by the final evaluation

  def run_dev_eval(step: int, state) -> float | None:
    if dev_spec is None:
      return None
    encoders["student"].params = jax.tree_util.tree_map(lambda x: x[0], state.params)
    values, by_query, run = evaluate_collection(dev_spec, encoders, k=config.eval.k,
                                                progress=False)
    metrics_log.write(step, {f"dev_{k}": v for k, v in values.items()})
    if step == config.num_train_steps:
      final_dev[dev_spec.name] = (values, by_query, run)
    return values["MAP"]

  if start == 0 and dev_spec is not None and config.eval.eval_at_start:
    run_dev_eval(0, state)
  best_dev_map = max((r["dev_MAP"] for r in metrics_log.records()
                      if "dev_MAP" in r and r["step"] > 0), default=-math.inf)
  bar = tqdm(range(start, config.num_train_steps), initial=start, total=config.num_train_steps,
             desc=f"{config.stage}:{config.loss}", disable=not config.progress_bar)
  window_start, window_steps, last = time.perf_counter(), 0, {}
  for step in bar:
    batch = batches.batch(step)
    if teacher_cache is not None:
      batch["teacher_tokens"] = teacher_cache.lookup(batches.indices(step),
                                                     batch["teacher_ids"], batch["teacher_mask"])
    state, metrics = step_fn(state, teacher_params, shard(batch, devices), rng)
    loss = float(metrics["loss"][0])
    if not math.isfinite(loss):
      latest.wait_until_finished()  # the last good checkpoint must be on disk, not in flight
      best.wait_until_finished()
      raise TrainingError(f"non-finite loss ({loss}) at step {step + 1}; the last good "
                          f"checkpoint (step {latest.latest_step()}) is kept in "
                          f"{workdir / 'checkpoints'}. Lower the learning rate or raise "
                          "ot.epsilon.")
    window_steps += 1
    done = step + 1
    if done % config.log_every_steps == 0 or done == config.num_train_steps:
      elapsed = time.perf_counter() - window_start
      last = {k: float(v[0]) for k, v in jax.device_get(metrics).items()}
      last["steps_per_sec"] = window_steps / elapsed
      last["compilations"] = len(step_fn.executables)
      metrics_log.write(done, last)
      bar.set_postfix(loss=f"{loss:.4f}", sps=f"{last['steps_per_sec']:.2f}")
      window_start, window_steps = time.perf_counter(), 0
    dev_map = None
    if dev_spec is not None and (done % config.eval_every_steps == 0
                                 or done == config.num_train_steps):
      dev_map = run_dev_eval(done, state)
      bar.write(f"step {done}: dev MAP {dev_map:.4f}")
    if done % config.checkpoint_every_steps == 0 or done == config.num_train_steps:
      _save(latest, done, state)
    if dev_map is not None and dev_map > best_dev_map:
      # Parameters only (a third of the state) and only on improvement: the best checkpoint
      # is for evaluation, and writing it at every dev evaluation slowed CPU training.
      best_dev_map = dev_map
      _save(best, done, {"params": state.params}, metrics={"dev_MAP": dev_map})
    if config.halt_after_steps and done - start >= config.halt_after_steps:
      bar.close()
      latest.wait_until_finished()
      print(f"halted after step {done} (halt_after_steps); rerun to resume", flush=True)
      return {}
  bar.close()
  latest.wait_until_finished()
  best.wait_until_finished()
  # Every batch array is [devices, batch, length, ...]: the lengths name the shapes.
  log.info("compiled the train step for %d shape(s): %s", len(step_fn.executables),
           sorted({shape[2] for key in step_fn.executables for _, shape in key}))
  if teacher_cache is not None:
    log.info("teacher token cache %s: encoded %d pairs, the rest were cached",
             teacher_cache.directory, teacher_cache.encoded)
  plot_curves(metrics_log.records(), workdir / "curves.png",
              title=f"{config.stage} / {config.loss}")
  encoders["student"].params = jax.tree_util.tree_map(lambda x: x[0], state.params)
  return evaluate_all(config, encoders, specs, workdir, evaluated=final_dev)


def evaluate_all(config, encoders: Mapping[str, TextEncoder], specs, workdir: Path, *,
                 measures=DEFAULT_MEASURES, progress: bool = True,
                 evaluated: Mapping[str, tuple] | None = None) -> dict:
  """Evaluates every collection, writing `eval.json`, per-query values and TREC run files.

  `evaluated` maps collection names to `evaluate_collection` results already computed with
  the same encoders and `measures` (the dev evaluation of the last training step).
  """
  results, per_query = {}, {}
  for spec in specs:
    if evaluated and spec.name in evaluated:
      values, by_query, run = evaluated[spec.name]
    else:
      values, by_query, run = evaluate_collection(spec, encoders, measures=measures,
                                                  k=config.eval.k, progress=progress)
    results[spec.name], per_query[spec.name] = values, by_query
    write_run(run, workdir / "runs" / f"{spec.name}.trec", tag=f"optical_jax-{config.loss}")
  if results:
    (workdir / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    (workdir / "eval_per_query.json").write_text(json.dumps(per_query) + "\n")
    rows = [{"collection": name, **values} for name, values in results.items()]
    print(format_table(rows, ["collection", *measures]), flush=True)
  return results


def restore_trained(config: ml_collections.ConfigDict, checkpoint: str | Path
                    ) -> tuple[ml_collections.ConfigDict, Models, dict, Path]:
  """The config (assets resolved), models and trained parameters of a workdir's latest
  checkpoint, and the workdir."""
  workdir = Path(checkpoint).expanduser().resolve()
  if workdir.name in ("checkpoints", "best"):
    workdir = workdir.parent
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(workdir / "checkpoints")
  if manager.latest_step() is None:
    raise TrainingError(f"{workdir / 'checkpoints'}: no checkpoint to evaluate")
  enable_compilation_cache(config)
  config = resolve_assets(config)
  models = build_models(config)
  optimizer = make_optimizer(config)
  state = restore_state(manager, initial_state(models, optimizer, config.trainable))
  return config, models, state.params, workdir


def evaluate_checkpoint(config: ml_collections.ConfigDict, checkpoint: str | Path, *,
                        measures=DEFAULT_MEASURES) -> dict:
  """Restores the latest checkpoint of a workdir and evaluates the config's collections."""
  config, models, params, workdir = restore_trained(config, checkpoint)
  return evaluate_all(config, side_encoders(models, params, config),
                      collection_specs(config), workdir, measures=measures)


def export_student(config: ml_collections.ConfigDict, checkpoint: str | Path,
                   directory: str | Path) -> Path:
  """Writes the trained student of a workdir's latest checkpoint as a Hugging Face checkpoint
  directory (weights, config.json, tokenizer, pooling), which `load_encoder`,
  `config.student` and transformers' PyTorch models load."""
  config, models, params, _ = restore_trained(config, checkpoint)
  if "projection" in params:
    raise TrainingError(
        f"the student ({models.student.config.hidden_size} wide) has a learned projection to "
        f"the teacher's {models.teacher.config.hidden_size} dimensions, which a Hugging Face "
        "encoder checkpoint cannot hold; use the workdir's orbax checkpoint instead")
  directory = models.student.save(directory, params["encoder"])
  log.info("wrote the student of %s to %s", checkpoint, directory)
  return directory
