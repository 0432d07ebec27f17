"""One epoch on the demo bitext, ours (bucketing, teacher token cache) vs PyTorch's.

  python benchmarks/epoch.py                     # MiniLM-L6, batch 32, max length 64
  python benchmarks/epoch.py --no-torch --repeats 3

What the step is, and how it is timed and counted: common.py.
"""

from __future__ import annotations

from common import (argument_parser, interleaved_medians, jax_reference, matmul_peak,
                    parse_args, run, torch_reference)

if __name__ == "__main__":
  # Before jax, numpy or torch start threads (see common.py).
  parser = argument_parser(__doc__.splitlines()[0], "--iterations", "--no-torch",
                           "--flax-dense")
  parser.add_argument("--sample", type=int, default=16,
                      help="PyTorch batches timed to estimate its mean step")
  ARGS = parse_args(parser)

import collections
import itertools

import numpy as np

from optical_jax import load_encoder
from optical_jax.config import base_config
from optical_jax.data.assets import resolve
from optical_jax.data.batching import BucketedBatches
from optical_jax.data.bitext import read_pairs
from optical_jax.files.token_arrays import TokenColumn
from optical_jax.models.encoder import encoder_flops_per_token
from optical_jax.shapes import pad_sequences

# The epoch table's length buckets: the train loop's default, and steps of 8 tokens.
EPOCH_BUCKETS = {"bucketed": base_config().data.length_buckets,
                 "buckets in steps of 8": tuple(range(8, 513, 8))}


def epoch(checkpoint: str, batch: int, length: int, *, iterations: int, repeats: int,
          sample: int, with_torch: bool) -> None:
  """One epoch of distillation on the demo's 27.2k English–Chichewa pairs, estimated as
  steps per epoch x mean step time.

  PyTorch's plain epoch: random batches padded to their longest text (transformers' usual
  dynamic padding), the teacher run in every step; its step is the median over the first
  `sample` batches of the epoch. Ours: the same random batches (the "before"; both sides
  padded to the longer) or length-bucketed ones (`EPOCH_BUCKETS`: the default buckets and
  finer ones), with the teacher either inside the step (a first epoch, which fills the cache)
  or read from the teacher token cache (every later epoch); each width's step is timed and
  weighted by how many of the epoch's batches have it. All of these take turns, `sample`
  rounds (`repeats` without torch).
  """
  rows = read_pairs(resolve("bible:train.tsv", base_config().runtime.cache_dir),
                    ("student", "teacher"))
  encoder = load_encoder(checkpoint)
  tokenize = lambda texts: TokenColumn.from_sequences(encoder.tokenizer(
      texts, truncation=True, max_length=length, padding=False)["input_ids"])
  columns = {"student": tokenize([r[0] for r in rows]), "teacher": tokenize([r[1] for r in rows])}
  pad = encoder.config.pad_token_id
  bucketed = {}  # bucket set name -> (steps per epoch, {width: batches}, a batch of each width)
  for name, length_buckets in EPOCH_BUCKETS.items():
    batches = BucketedBatches(columns, {"student": pad, "teacher": pad}, batch_size=batch,
                              max_length=length, seed=0, length_buckets=length_buckets)
    widths = [batches.width(i) for i in range(batches.steps_per_epoch)]
    bucketed[name] = (len(widths), collections.Counter(widths),
                      {w: batches.batch(widths.index(w)) for w in set(widths)})
  # The plain epoch, PyTorch's and ours without buckets: random batches padded to their longest.
  order = np.random.default_rng(0).permutation(len(rows))
  random_batches = [order[i:i + batch] for i in range(0, len(rows) - batch + 1, batch)]

  def padded(index, name, width=None):  # to `width`, or to the batch's longest text
    texts = [columns[name][i] for i in index]
    return pad_sequences(texts, width or max(len(t) for t in texts), pad)

  random_widths = [max(len(columns[name][i]) for name in columns for i in index)
                   for index in random_batches]
  random_counts = collections.Counter(random_widths)
  print(f"{len(rows)} pairs, batch {batch}, max length {length}, {iterations} Sinkhorn "
        f"iterations; batches (width: count): random, padded to their longest "
        f"{dict(sorted(random_counts.items()))}" + "".join(
            f"; {name} {dict(sorted(counts.items()))}"
            for name, (_, counts, _) in bucketed.items()))

  step, models = jax_reference(checkpoint, iterations=iterations)
  hidden = models.teacher.config.hidden_size
  examples = {w: a for _, _, by_width in bucketed.values() for w, a in by_width.items()}
  for width in set(random_counts) - set(examples):
    index = random_batches[random_widths.index(width)]
    examples[width] = {}
    for name in columns:
      examples[width][f"{name}_ids"], examples[width][f"{name}_mask"] = padded(index, name, width)
  timed = {}
  for width, arrays in sorted(examples.items()):
    inline = dict(arrays)
    cached = {**inline, "teacher_tokens": np.zeros((*inline["teacher_ids"].shape, hidden),
                                                   np.float32)}
    timed[width, "inline"] = lambda inline=inline: step(inline)
    timed[width, "cached"] = lambda cached=cached: step(cached)
  if with_torch:
    import torch
    reference = torch_reference(checkpoint, iterations=iterations)
    torch_batches = [tuple(torch.from_numpy(a).long() for name in ("student", "teacher")
                           for a in padded(index, name)) for index in random_batches[:sample]]
    next_batch = itertools.cycle(torch_batches)
    timed["torch"] = lambda: reference(*next(next_batch))
    print(f"PyTorch: mean width (student, teacher) of its {sample} timed batches: "
          f"({np.mean([b[0].shape[1] for b in torch_batches]):.1f}, "
          f"{np.mean([b[2].shape[1] for b in torch_batches]):.1f})")
  # One round times every width's two steps and one PyTorch batch, so drift slows all alike;
  # the rounds cycle through PyTorch's `sample` batches, each timed once.
  medians = interleaved_medians(timed, sample if with_torch else repeats, warmup=1)

  def epoch_seconds(width_counts, variant):
    return sum(n * medians[w, variant] for w, n in width_counts.items())

  results = [  # (name, number of steps, epoch seconds)
      ("optical_jax, random batches, teacher in the step", len(random_batches),
       epoch_seconds(random_counts, "inline")),
      ("optical_jax, random batches, cached teacher tokens", len(random_batches),
       epoch_seconds(random_counts, "cached"))]
  for name, (steps, counts, _) in bucketed.items():
    results += [
        (f"optical_jax, {name}, teacher in the step (first epoch: fills the cache)", steps,
         epoch_seconds(counts, "inline")),
        (f"optical_jax, {name}, cached teacher tokens (later epochs)", steps,
         epoch_seconds(counts, "cached"))]
  if with_torch:
    results.insert(0, ("PyTorch reference, random batches padded to their longest",
                       len(random_batches), len(random_batches) * medians["torch"]))
  print("| epoch | steps | mean step (s) | epoch (min) | speed vs PyTorch |")
  print("|---|---|---|---|---|")
  for name, n, seconds in results:
    ratio = f"{results[0][2] / seconds:.2f}x" if with_torch else ""
    print(f"| {name} | {n} | {seconds / n:.3f} | {seconds / 60:.1f} | {ratio} |", flush=True)
  # The ceiling: with the teacher cached, a step is the student's forward and backward (3x the
  # forward's matmul FLOPs), which no schedule makes faster than the machine's matmul peak.
  peak = matmul_peak()
  for name, (_, counts, _) in bucketed.items():
    student_flops = sum(counts[w] * 3 * encoder_flops_per_token(models.student.config, w)
                        * batch * w for w in counts)
    print(f"{name}: the cached epoch's student matmuls alone at the measured peak "
          f"({peak / 1e9:.0f} GFLOP/s): {student_flops / peak / 60:.1f} min", end="")
    if with_torch:
      target = results[0][2] / 2
      print(f"; 2x PyTorch's epoch would be {target / 60:.1f} min, "
            f"{student_flops / target / peak:.0%} of peak", end="")
    print()


if __name__ == "__main__":
  run(ARGS, lambda checkpoint: epoch(
      checkpoint, ARGS.batch, ARGS.length, iterations=ARGS.iterations, repeats=ARGS.repeats,
      sample=ARGS.sample, with_torch=not ARGS.no_torch))
