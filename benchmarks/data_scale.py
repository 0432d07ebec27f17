"""configs/so.py's data path at CIRAL's real size: wall time and peak host memory per stage.

  python benchmarks/data_scale.py                                   # 100k and 1M pairs
  python benchmarks/data_scale.py --pairs 100000 --passages 100000  # one size
  python benchmarks/data_scale.py --pairs 1000000 --passages 827552 --end-to-end

A synthetic mirror in the hub layout `docs/somali.md` documents (`ciral.local_dir`): a
quickmt-style parquet bitext (so, en, sco) of --pairs rows, CIRAL's Somali corpus as JSONL of
--passages passages of ~60 words, and topics and qrels of dev, test-a and test-b; tiny random
models (one layer, 32 wide) with a real WordPiece tokenizer, so that only the data path's cost
shows. Each size runs in a fresh process, its stages in turn:

  bitext build        clean the parquet and split it into train.tsv and the held-out pairs
  training rows       read and check train.tsv (each row's length in characters)
  tokenisation        both sides into flat token arrays on disk (this process's shards)
  teacher cache       the teacher token cache's files created (space reserved)
  collection check    topics, qrels and the corpus of every collection checked
  first evaluation    CIRAL dev: corpus tokenised, encoded, searched
  second evaluation   the same, its token ids from the cache
  MaxSim rerank       CIRAL dev's dense top 100 per query reranked by MaxSim: only those
                      candidates' passages are encoded to tokens (the last row also states
                      its time as a share of the second evaluation's dense pass)

Each row: the stage's wall time, the process's resident memory after it, and its peak so far
(`ru_maxrss`). --end-to-end also runs `train.py --config configs/so.py` (20 steps, batch 64,
the final evaluation of every collection) on the same mirror and reports its wall time and
peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORDS = 5000  # the synthetic languages' vocabularies
SPLITS = {"dev": 60, "test-a": 70, "test-b": 70}  # topics per split


def _rss_mb() -> float:
  for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmRSS:"):
      return int(line.split()[1]) / 1024
  return float("nan")


def _peak_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _language(rng, prefix: str):
  import numpy as np
  syllables = ["ka", "la", "ma", "sa", "ta", "wa", "ya", "da", "ba", "ha", "ra", "na", "ga",
               "qa", "xa", "ee", "oo", "ii", "uu", "dh"]
  words = set()
  while len(words) < WORDS:
    words.add("".join(rng.choice(syllables, rng.integers(2, 5))))
  return np.array(sorted(words))


def make_mirror(directory: Path, pairs: int, passages: int, seed: int = 0) -> Path:
  """The synthetic mirror (written once per size into `directory`)."""
  import numpy as np
  done = directory / "done.json"
  if done.is_file():
    return directory
  shutil.rmtree(directory, ignore_errors=True)
  rng = np.random.default_rng(seed)
  somali, english = _language(rng, "so"), _language(rng, "en")
  import pyarrow as pa
  import pyarrow.parquet as pq
  path = directory / "quickmt-train.so-en" / "data" / "train-00000-of-00001.parquet"
  path.parent.mkdir(parents=True)
  schema = pa.schema([("so", pa.string()), ("en", pa.string()), ("sco", pa.float64())])
  with pq.ParquetWriter(path, schema) as writer:
    for start in range(0, pairs, 100_000):
      n = min(100_000, pairs - start)
      lengths = rng.integers(4, 30, n)
      so = [" ".join(somali[rng.integers(0, WORDS, k)]) for k in lengths]
      en = [" ".join(english[rng.integers(0, WORDS, k)]) for k in lengths]
      writer.write_table(pa.table({"so": so, "en": en, "sco": rng.random(n)}, schema=schema))
  corpus = directory / "ciral-corpus" / "passages-v1.0" / "somali_passages.jsonl"
  corpus.parent.mkdir(parents=True)
  with open(corpus, "w", encoding="utf-8") as f:
    for start in range(0, passages, 50_000):
      n = min(50_000, passages - start)
      lines = []
      for i, k in zip(range(start, start + n), rng.integers(40, 80, n)):
        text = " ".join(somali[rng.integers(0, WORDS, k)])
        lines.append(json.dumps({"docid": f"SRC#{i // 5}#{i % 5}", "title": f"title {i // 5}",
                                 "text": text, "url": f"https://example.so/{i // 5}"}))
      f.write("\n".join(lines) + "\n")
  topics = directory / "ciral" / "ciral-somali" / "topics"
  qrels = directory / "ciral" / "ciral-somali" / "qrels"
  topics.mkdir(parents=True)
  qrels.mkdir(parents=True)
  qid = 0
  for split, count in SPLITS.items():
    lines, judged = [], []
    for _ in range(count):
      qid += 1
      lines.append(f"{qid}\t{' '.join(english[rng.integers(0, WORDS, 6)])}")
      for i in rng.integers(0, passages, 8):
        judged.append(f"{qid}\tQ0\tSRC#{i // 5}#{i % 5}\t{int(rng.random() < 0.3)}")
    (topics / f"topics.ciral-v1.0-so-{split}.tsv").write_text("\n".join(lines) + "\n")
    (qrels / f"qrels.ciral-v1.0-so-{split}.tsv").write_text("\n".join(judged) + "\n")
  done.write_text(json.dumps({"pairs": pairs, "passages": passages}))
  return directory


def tiny_model(directory: Path) -> Path:
  """A one-layer, 32-wide random BERT with all-MiniLM-L6-v2's (real) WordPiece tokenizer."""
  import jax
  import jax.numpy as jnp
  from optical_jax.data.assets import minilm_checkpoint_dir
  from optical_jax.models.encoder import Encoder, EncoderConfig
  from optical_jax.models.hf_checkpoint import save_hf_checkpoint
  if (directory / "config.json").is_file():
    return directory
  hf = dict(model_type="bert", vocab_size=30522, hidden_size=32, num_hidden_layers=1,
            num_attention_heads=4, intermediate_size=64, max_position_embeddings=512,
            type_vocab_size=2, pad_token_id=0)
  config = EncoderConfig.from_hf_dict(hf, source="tiny")
  ids = jnp.ones((1, 2), jnp.int32)
  params = jax.jit(Encoder(config).init)(jax.random.PRNGKey(0), ids, ids)["params"]
  save_hf_checkpoint(directory, params, config, hf_config=hf)
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
               "special_tokens_map.json"):
    if (minilm_checkpoint_dir() / name).is_file():
      shutil.copy(minilm_checkpoint_dir() / name, directory / name)
  return directory


def so_config(mirror: Path, model: Path, cache: Path, pairs: int):
  from runpy import run_path
  c = run_path(str(ROOT / "configs" / "ciral.py"))["ciral_config"]("somali")
  c.ciral.local_dir = str(mirror)
  c.ciral.bitext = str(mirror / "quickmt-train.so-en")
  c.model.teacher = c.model.student = str(model)
  c.model.dtype = "float32"
  c.data.limit = pairs
  c.train.batch_size, c.train.num_train_steps = 64, 20
  c.runtime.cache_dir = str(cache)
  c.runtime.progress_bar = False
  return c


def stages(args) -> None:
  """One size's stages, in this process; a JSON line per stage on stdout."""
  from optical_jax.runtime import console
  console.quiet_libraries()
  report = lambda stage, start: print(json.dumps(dict(
      stage=stage, seconds=time.perf_counter() - start, rss_mb=_rss_mb(),
      peak_mb=_peak_mb())), flush=True)
  start = time.perf_counter()
  mirror = make_mirror(Path(args.data) / f"mirror-{args.pairs}-{args.passages}", args.pairs,
                       args.passages)
  model = tiny_model(Path(args.data) / "tiny-bert")
  cache = Path(args.data) / f"cache-{args.pairs}-{args.passages}-{os.getpid()}"
  report("synthetic data (made once, reused)", start)
  import jax
  from optical_jax.data.inputs import resolve_inputs
  from optical_jax.evaluation.check import check_collections
  from optical_jax.evaluation.collections import Evaluator, collection_specs
  from optical_jax.files.layout import CacheDir
  from optical_jax.models.student import build_models
  from optical_jax.training.input_pipeline import (make_batches, make_teacher_cache,
                                                   training_rows)
  config = so_config(mirror, model, cache, args.pairs)
  start = time.perf_counter()
  config = resolve_inputs(config).config
  report("bitext build", start)
  start = time.perf_counter()
  rows = training_rows(config)
  report(f"training rows ({len(rows):,} pairs)", start)
  start = time.perf_counter()
  models = build_models(config)
  batches = make_batches(config, models, rows, CacheDir(cache).tokens)
  report("tokenisation", start)
  start = time.perf_counter()
  teacher_cache = make_teacher_cache(config, models, batches, backend=jax.default_backend())
  report("teacher cache", start)
  del batches, teacher_cache, rows
  start = time.perf_counter()
  specs = collection_specs(config)
  check_collections(specs, cache)
  report("collection check", start)
  config.eval.embedding_cache = False  # the second evaluation encodes again
  spec = next(s for s in specs if s.name.endswith("-dev"))
  evaluator = Evaluator(models, config)
  params = models.init_params(jax.random.PRNGKey(0))
  for stage in ("first evaluation", "second evaluation"):
    start = time.perf_counter()
    result = evaluator.evaluate(spec, params)
    report(f"{stage} ({args.passages:,} passages)", start)
    dense_seconds = time.perf_counter() - start
  from optical_jax.evaluation.io import read_topics
  from optical_jax.evaluation.maxsim import maxsim_rerank
  start = time.perf_counter()
  teacher, student = evaluator.teacher, evaluator.encoders["student"].bind(params)
  topics = read_topics(spec.topics)
  query_tokens = dict(zip(topics, teacher.encode_tokens(list(topics.values()), progress=False)))
  maxsim_rerank(result.run, query_tokens, student.corpus(Path(spec.corpus)), student, depth=100)
  seconds = time.perf_counter() - start
  report(f"MaxSim rerank ({len(topics)} queries x 100; "
         f"{100 * seconds / dense_seconds:.1f}% of the dense pass)", start)
  shutil.rmtree(cache, ignore_errors=True)


def end_to_end(args, pairs: int, passages: int) -> dict:
  """`train.py --config configs/so.py` on the mirror: wall time and the peak RSS of its
  process (sampled every 0.2 s)."""
  mirror = make_mirror(Path(args.data) / f"mirror-{pairs}-{passages}", pairs, passages)
  model = tiny_model(Path(args.data) / "tiny-bert")
  cache = Path(args.data) / f"e2e-cache-{pairs}-{passages}"
  workdir = Path(args.data) / f"e2e-run-{pairs}-{passages}"
  shutil.rmtree(cache, ignore_errors=True)
  shutil.rmtree(workdir, ignore_errors=True)
  command = [sys.executable, str(ROOT / "train.py"), f"--config={ROOT / 'configs' / 'so.py'}",
             f"--workdir={workdir}", f"--config.ciral.local_dir={mirror}",
             f"--config.ciral.bitext={mirror / 'quickmt-train.so-en'}",
             f"--config.model.teacher={model}", f"--config.model.student={model}",
             "--config.model.dtype=float32", f"--config.data.limit={pairs}",
             "--config.train.num_train_steps=20", "--config.train.batch_size=64",
             f"--config.runtime.cache_dir={cache}", "--config.runtime.progress_bar=False"]
  env = dict(os.environ, HF_HUB_OFFLINE="1")
  start = time.perf_counter()
  process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
  peak = [0.0]

  def sample():
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
      try:
        for line in status.read_text().splitlines():
          if line.startswith("VmHWM:"):  # the kernel's own peak RSS of the process
            peak[0] = max(peak[0], int(line.split()[1]) / 1024)
      except OSError:
        pass
      time.sleep(0.2)

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  output = process.communicate()[0]
  sampler.join()
  seconds = time.perf_counter() - start
  if process.returncode:
    print(output[-3000:], file=sys.stderr)
  return dict(seconds=seconds, peak_mb=peak[0], returncode=process.returncode,
              log=output.strip().splitlines()[-8:])


def cpu_line() -> str:
  sys.path.insert(0, str(ROOT / "benchmarks"))
  from common import cpu_description
  return cpu_description()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pairs", type=int, nargs="+", default=[100_000, 1_000_000])
  parser.add_argument("--passages", type=int, nargs="+", default=[100_000, 827_552])
  parser.add_argument("--data", default=str(Path.home() / ".cache" / "optical_jax" /
                                            "data_scale"), help="where the mirrors go")
  parser.add_argument("--end-to-end", action="store_true",
                      help="also run train.py --config configs/so.py on the largest size")
  parser.add_argument("--stages", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  if args.stages:
    args.pairs, args.passages = args.pairs[0], args.passages[0]
    stages(args)
    return
  if len(args.pairs) != len(args.passages):
    parser.error("give as many --passages as --pairs (one size each)")
  print(f"CPU: {cpu_line()}")
  results = {}
  for pairs, passages in zip(args.pairs, args.passages):
    out = subprocess.run([sys.executable, __file__, "--stages", "--pairs", str(pairs),
                          "--passages", str(passages), "--data", args.data],
                         capture_output=True, text=True)
    if out.returncode:
      print(out.stderr[-3000:], file=sys.stderr)
      raise SystemExit(f"the stages of {pairs} pairs failed")
    results[pairs, passages] = [json.loads(l) for l in out.stdout.splitlines()
                                if l.startswith("{")]
  sizes = list(results)
  print("\n| stage | " + " | ".join(f"{p:,} pairs, {q:,} passages: s / RSS / peak (MB)"
                                     for p, q in sizes) + " |")
  print("|---|" + "---|" * len(sizes))
  names = [r["stage"].split(" (")[0] for r in results[sizes[0]]]
  for i, name in enumerate(names):
    cells = [f"{rs[i]['seconds']:.1f} / {rs[i]['rss_mb']:,.0f} / {rs[i]['peak_mb']:,.0f}"
             for rs in results.values()]
    print(f"| {name} | " + " | ".join(cells) + " |")
  for (pairs, passages), rows in results.items():
    maxsim = next(r["stage"] for r in rows if r["stage"].startswith("MaxSim rerank"))
    print(f"\n{passages:,} passages: {maxsim}")
  if len(sizes) > 1:
    (p0, _), (p1, _) = sizes[0], sizes[-1]
    peak0, peak1 = results[sizes[0]][-1]["peak_mb"], results[sizes[-1]][-1]["peak_mb"]
    token0, token1 = (next(r["peak_mb"] for r in results[size] if r["stage"] == "tokenisation")
                      for size in (sizes[0], sizes[-1]))
    print(f"\npeak RSS grows {peak1 - peak0:,.0f} MB from {p0:,} to {p1:,} pairs, corpus "
          f"growth included; the data path's (up to tokenisation) {token1 - token0:,.0f} MB: "
          f"{(token1 - token0) / (p1 - p0) * 1e6:,.0f} MB per million pairs")
  if args.end_to_end:
    pairs, passages = sizes[-1]
    e2e = end_to_end(args, pairs, passages)
    print(f"\ntrain.py --config configs/so.py (20 steps, batch 64, final evaluation of every "
          f"collection) on {pairs:,} pairs and {passages:,} passages: {e2e['seconds'] / 60:.1f} "
          f"min, peak RSS {e2e['peak_mb']:,.0f} MB, exit code {e2e['returncode']}")


if __name__ == "__main__":
  main()
