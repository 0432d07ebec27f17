"""The full distillation step, ours vs a PyTorch reference doing the same work, in one run.

  python benchmarks/train_step.py                      # MiniLM-L6, B=32, L=64, float32
  python benchmarks/train_step.py --batch 64 --length 128 --dtype bfloat16 --no-torch
  python benchmarks/train_step.py --grid               # scaling table (batch, length, iters)
  python benchmarks/train_step.py --breakdown          # forward vs backward, ours and torch's
  python benchmarks/train_step.py --epoch              # demo-bitext epoch: buckets, teacher cache

Step = frozen teacher forward + student forward/backward + OT loss (1 - cos, log-domain
Sinkhorn, detached plan) + clipped AdamW update. Times are medians after compilation /
warm-up. FLOPs are counted analytically (encoder matmuls only), and the fraction of the
machine's peak uses a large matmul measured in the same run. torch (`pip install
torch==2.13.0`) is a benchmark-only dependency.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np

from optical_jax.assets import minilm_checkpoint_dir
from optical_jax.config import base_config
from optical_jax.modeling import encoder_flops_per_token
from timing import median_seconds
from optical_jax.train import (build_models, initial_state, make_optimizer, make_train_step,
                               replicate)


def matmul_peak(dtype=jnp.float32, n: int = 2048) -> float:
  """FLOP/s of a large square matmul: the machine's practical peak for this dtype."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  seconds = median_seconds(lambda: f(a).block_until_ready(), 5)
  return 2 * n ** 3 / seconds


def step_flops(config, batch: int, length: int) -> float:
  """Teacher forward (1x) + student forward and backward (3x) encoder FLOPs."""
  return 4 * encoder_flops_per_token(config, length) * batch * length


def jax_reference(checkpoint: str, *, dtype: str = "float32", iterations: int = 50,
                  remat: bool = False):
  """Our distillation step `step(batch) -> loss` (the train loop's pmapped step) and the
  student's encoder config. `batch` holds `[1, batch, length]` arrays; with
  `teacher_tokens` in it, the teacher's forward is skipped (the cached path)."""
  config = base_config()
  config.teacher, config.dtype, config.remat, config.dropout = checkpoint, dtype, remat, 0.0
  config.loss, config.num_train_steps = "ot", 1000
  config.ot.max_iterations, config.ot.threshold = iterations, 0.0  # fixed iterations
  models = build_models(config)
  optimizer = make_optimizer(config)
  holder = {"state": replicate(initial_state(models, optimizer))}
  teacher_params = replicate(models.teacher.params)
  rng = replicate(jax.random.PRNGKey(0))
  train_step = make_train_step(config, models, optimizer)

  def step(batch_arrays):
    holder["state"], metrics = train_step(holder["state"], teacher_params, batch_arrays, rng)
    return jax.block_until_ready(metrics["loss"])

  return step, models


def jax_step(checkpoint: str, batch: int, length: int, *, dtype: str, iterations: int,
             remat: bool, repeats: int):
  step, models = jax_reference(checkpoint, dtype=dtype, iterations=iterations, remat=remat)
  ids = np.random.default_rng(0).integers(1000, 20000, (1, batch, length)).astype(np.int32)
  batch_arrays = {"student_ids": ids, "student_mask": np.ones_like(ids),
                  "teacher_ids": ids[:, :, ::-1].copy(), "teacher_mask": np.ones_like(ids)}
  return median_seconds(lambda: step(batch_arrays), repeats, warmup=2), models.student.config


def torch_reference(checkpoint: str, *, iterations: int):
  """A PyTorch distillation step `step(student_ids, student_mask, teacher_ids, teacher_mask)`
  on int64 tensors: transformers' models, log-domain Sinkhorn with masked uniform marginals,
  detached plan, clipped AdamW."""
  import torch
  from transformers import AutoModel
  torch.manual_seed(0)
  student = AutoModel.from_pretrained(checkpoint).train()
  teacher = AutoModel.from_pretrained(checkpoint).eval()
  for module in (student, teacher):  # dropout off, as in ours
    for m in module.modules():
      if isinstance(m, torch.nn.Dropout):
        m.p = 0.0
  optimizer = torch.optim.AdamW(student.parameters(), lr=5e-5, weight_decay=0.01)
  epsilon = 0.05

  def log_marginal(mask):
    mask = mask.bool()
    return torch.where(mask, -torch.log(mask.sum(-1, keepdim=True).float()), -torch.inf)

  def sinkhorn(cost, log_a, log_b):
    f, g = torch.zeros_like(log_a), torch.zeros_like(log_b)
    for _ in range(iterations):
      f = -epsilon * torch.logsumexp(log_b[:, None, :] + (g[:, None, :] - cost) / epsilon, -1)
      g = -epsilon * torch.logsumexp(log_a[:, :, None] + (f[:, :, None] - cost) / epsilon, 1)
    return torch.exp(log_a[:, :, None] + log_b[:, None, :] +
                     (f[:, :, None] + g[:, None, :] - cost) / epsilon)

  def step(student_ids, student_mask, teacher_ids, teacher_mask):
    with torch.no_grad():
      t = teacher(input_ids=teacher_ids, attention_mask=teacher_mask).last_hidden_state
    s = student(input_ids=student_ids, attention_mask=student_mask).last_hidden_state
    norm = torch.nn.functional.normalize
    cost = 1 - norm(s, dim=-1) @ norm(t, dim=-1).transpose(1, 2)
    with torch.no_grad():
      plan = sinkhorn(cost.detach(), log_marginal(student_mask), log_marginal(teacher_mask))
    loss = (plan * cost).sum((1, 2)).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

  return step


def torch_step(checkpoint: str, batch: int, length: int, *, iterations: int,
               repeats: int) -> float:
  import torch
  step = torch_reference(checkpoint, iterations=iterations)
  ids = torch.from_numpy(np.random.default_rng(0).integers(1000, 20000, (batch, length)))
  mask = torch.ones_like(ids)
  return median_seconds(lambda: step(ids, mask, ids.flip(1), mask), repeats, warmup=2)


def breakdown(checkpoint: str, batch: int, length: int, *, repeats: int, with_torch: bool) -> None:
  """Encoder forward and forward+backward alone, ours and torch's: where the step goes."""
  from optical_jax import load_encoder
  encoder = load_encoder(checkpoint)
  ids = np.random.default_rng(0).integers(1000, 20000, (batch, length)).astype(np.int32)
  mask = np.ones_like(ids)
  apply = lambda params: encoder.apply(params, ids, mask)
  forward = jax.jit(apply)
  backward = jax.jit(jax.grad(lambda params: jnp.sum(apply(params) ** 2)))

  def frozen_embeddings(params, table):  # no gradient for the word-embedding table
    embeddings = {**params["embeddings"], "word_embeddings": {"embedding": table}}
    return jax.grad(lambda p: jnp.sum(apply({**p, "embeddings": embeddings}) ** 2))(params)

  frozen = jax.jit(frozen_embeddings)
  table = encoder.params["embeddings"]["word_embeddings"]["embedding"]
  rows = [
      ("JAX encoder forward", lambda: forward(encoder.params).block_until_ready()),
      ("JAX encoder forward + backward", lambda: jax.block_until_ready(backward(encoder.params))),
      ("JAX forward + backward, word embeddings frozen",
       lambda: jax.block_until_ready(frozen(encoder.params, table))),
  ]
  if with_torch:
    import torch
    from transformers import AutoModel
    model = AutoModel.from_pretrained(checkpoint)
    for m in model.modules():
      if isinstance(m, torch.nn.Dropout):
        m.p = 0.0
    t_ids, t_mask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()

    def torch_forward():
      with torch.no_grad():
        model(input_ids=t_ids, attention_mask=t_mask)

    def torch_backward():
      (model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state ** 2).sum().backward()
      model.zero_grad(set_to_none=True)

    rows += [("PyTorch encoder forward", torch_forward),
             ("PyTorch encoder forward + backward", torch_backward)]
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, B={batch} L={length}")
  print("| piece | median (s) |")
  print("|---|---|")
  for name, fn in rows:
    print(f"| {name} | {median_seconds(fn, repeats, warmup=2):.3f} |", flush=True)


def epoch(checkpoint: str, batch: int, length: int, *, iterations: int, repeats: int,
          sample: int, with_torch: bool) -> None:
  """One epoch of distillation on the demo's 28.8k English–Chichewa pairs, estimated as
  steps per epoch x mean step time.

  PyTorch's plain epoch: random batches padded to their longest text (transformers' usual
  dynamic padding), the teacher run in every step; its mean step is measured on the first
  `sample` batches of the epoch. Ours: length-bucketed batches, the teacher either inside
  the step (a first epoch, which fills the cache) or read from the teacher token cache
  (every later epoch); each bucket's step is timed (median of `repeats`) and weighted by how
  many of the epoch's batches fall in it.
  """
  from optical_jax import load_encoder
  from optical_jax.assets import resolve
  from optical_jax.data import BucketedBatches, read_pairs, tokenize_cached
  from optical_jax.shapes import pad_sequences
  rows = read_pairs(resolve("bible:train.tsv", base_config().cache_dir), ("student", "teacher"))
  encoder = load_encoder(checkpoint)
  tokenize = lambda texts: tokenize_cached(encoder.tokenizer, texts, max_length=length,
                                          cache_dir=None, tag="")
  columns = {"student": tokenize([r[0] for r in rows]), "teacher": tokenize([r[1] for r in rows])}
  pad = encoder.config.pad_token_id
  buckets = BucketedBatches(columns, {"student": pad, "teacher": pad}, batch_size=batch,
                            max_length=length, seed=0)
  steps = buckets.steps_per_epoch
  widths = [buckets.width(i) for i in range(steps)]
  counts = {w: widths.count(w) for w in buckets.shapes}
  print(f"{len(rows)} pairs, batch {batch}, max length {length}, {iterations} Sinkhorn "
        f"iterations; our buckets (width: batches) {counts}")

  step, models = jax_reference(checkpoint, iterations=iterations)
  hidden = models.teacher.config.hidden_size
  per_width = {}
  for width in buckets.shapes:
    arrays = buckets.batch(widths.index(width))
    inline = {k: v[None] for k, v in arrays.items()}
    cached = {**inline, "teacher_tokens": np.zeros((1, batch, width, hidden), np.float32)}
    per_width[width] = (median_seconds(lambda: step(inline), repeats, warmup=2),
                        median_seconds(lambda: step(cached), repeats, warmup=2))
  results = [
      ("optical_jax, bucketed, teacher in the step (first epoch: fills the cache)",
       sum(counts[w] * per_width[w][0] for w in counts) / steps),
      ("optical_jax, bucketed, cached teacher tokens (later epochs)",
       sum(counts[w] * per_width[w][1] for w in counts) / steps)]
  if with_torch:
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    reference = torch_reference(checkpoint, iterations=iterations)
    order = np.random.default_rng(0).permutation(len(rows))

    def padded(index, name):  # to the longest text of the batch
      texts = [columns[name][i] for i in index]
      ids, mask = pad_sequences(texts, max(len(t) for t in texts), pad)
      return torch.from_numpy(ids).long(), torch.from_numpy(mask).long()

    torch_batches = [(*padded(order[i:i + batch], "student"), *padded(order[i:i + batch], "teacher"))
                     for i in range(0, batch * (sample + 1), batch)]
    reference(*torch_batches[-1])  # warm-up
    times = []
    for b in torch_batches[:sample]:
      start = time.perf_counter()
      reference(*b)
      times.append(time.perf_counter() - start)
    results.insert(0, ("PyTorch reference, random batches padded to their longest",
                       float(np.mean(times))))
    print(f"PyTorch: mean width (student, teacher) of its {sample} timed batches: "
          f"({np.mean([b[0].shape[1] for b in torch_batches[:sample]]):.1f}, "
          f"{np.mean([b[2].shape[1] for b in torch_batches[:sample]]):.1f})")
  print(f"| epoch of {steps} steps | mean step (s) | epoch (min) | speed vs PyTorch |")
  print("|---|---|---|---|")
  for name, seconds in results:
    ratio = f"{results[0][1] / seconds:.2f}x" if with_torch else ""
    print(f"| {name} | {seconds:.3f} | {steps * seconds / 60:.1f} | {ratio} |", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", default=None, help="HF checkpoint (default: MiniLM-L6)")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--iterations", type=int, default=50)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--remat", action="store_true")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
  parser.add_argument("--grid", action="store_true", help="scaling table instead")
  parser.add_argument("--breakdown", action="store_true",
                      help="encoder forward / forward+backward alone, ours and torch's")
  parser.add_argument("--epoch", action="store_true",
                      help="epoch time on the demo bitext (bucketing, teacher token cache)")
  parser.add_argument("--sample", type=int, default=16,
                      help="--epoch: PyTorch batches timed to estimate its mean step")
  args = parser.parse_args()
  checkpoint = args.checkpoint or str(minilm_checkpoint_dir())
  if args.breakdown:
    breakdown(checkpoint, args.batch, args.length, repeats=args.repeats,
              with_torch=not args.no_torch)
    return
  if args.epoch:
    epoch(checkpoint, args.batch, args.length, iterations=args.iterations,
          repeats=args.repeats, sample=args.sample, with_torch=not args.no_torch)
    return
  device = jax.devices()[0]
  peak = matmul_peak(jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
  print(f"device: {device.platform} {device.device_kind} x{jax.local_device_count()}, "
        f"measured matmul peak {peak / 1e9:.1f} GFLOP/s ({args.dtype})")
  if args.grid:
    print("| batch | length | Sinkhorn iters | step (s) | tokens/s | GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|")
    for batch, length, iters in [(32, 32, 50), (32, 64, 50), (32, 128, 50), (32, 256, 50),
                                 (64, 64, 50), (128, 64, 50), (256, 64, 50),
                                 (32, 64, 10), (32, 64, 200)]:
      seconds, config = jax_step(checkpoint, batch, length, dtype=args.dtype, iterations=iters,
                                 remat=args.remat, repeats=args.repeats)
      flops = step_flops(config, batch, length) / seconds
      print(f"| {batch} | {length} | {iters} | {seconds:.3f} | {batch * length / seconds:.0f} "
            f"| {flops / 1e9:.1f} | {flops / peak:.0%} |", flush=True)
    return
  ours, config = jax_step(checkpoint, args.batch, args.length, dtype=args.dtype,
                          iterations=args.iterations, remat=args.remat, repeats=args.repeats)
  flops = step_flops(config, args.batch, args.length)
  rows = [("optical_jax (JAX/Flax, ott-jax)", ours)]
  if not args.no_torch:
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    rows.append(("PyTorch reference (transformers, torch Sinkhorn)",
                 torch_step(checkpoint, args.batch, args.length, iterations=args.iterations,
                            repeats=args.repeats)))
  print(f"B={args.batch} L={args.length} Sinkhorn iterations={args.iterations} "
        f"dtype={args.dtype} remat={args.remat}; {flops / 1e9:.1f} GFLOP per step")
  print("| implementation | step (s) | tokens/s | GFLOP/s | of measured peak |")
  print("|---|---|---|---|---|")
  for name, seconds in rows:
    print(f"| {name} | {seconds:.3f} | {args.batch * args.length / seconds:.0f} | "
          f"{flops / seconds / 1e9:.1f} | {flops / seconds / peak:.0%} |")
  if len(rows) == 2:
    print(f"ours is {rows[1][1] / rows[0][1]:.2f}x the speed of the PyTorch reference")


if __name__ == "__main__":
  main()
