"""The full distillation step, ours vs a PyTorch reference doing the same work, in one run.

  python benchmarks/train_step.py                      # MiniLM-L6, B=32, L=64, float32
  python benchmarks/train_step.py --batch 64 --length 128 --dtype bfloat16 --no-torch
  python benchmarks/train_step.py --grid               # scaling table (batch, length, iters)
  python benchmarks/train_step.py --breakdown          # forward vs backward, ours and torch's

Step = frozen teacher forward + student forward/backward + OT loss (1 - cos, log-domain
Sinkhorn, detached plan) + clipped AdamW update. Times are medians after compilation /
warm-up. FLOPs are counted analytically (encoder matmuls only), and the fraction of the
machine's peak uses a large matmul measured in the same run. torch (`pip install
torch==2.13.0`) is a benchmark-only dependency.
"""

from __future__ import annotations

import argparse
import os

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


def jax_step(checkpoint: str, batch: int, length: int, *, dtype: str, iterations: int,
             remat: bool, repeats: int):
  config = base_config()
  config.teacher, config.dtype, config.remat, config.dropout = checkpoint, dtype, remat, 0.0
  config.loss, config.num_train_steps = "ot", 1000
  config.ot.max_iterations, config.ot.threshold = iterations, 0.0  # fixed iterations
  models = build_models(config)
  optimizer = make_optimizer(config)
  state = replicate(initial_state(models, optimizer))
  teacher_params = replicate(models.teacher.params)
  rng = replicate(jax.random.PRNGKey(0))
  ids = np.random.default_rng(0).integers(1000, 20000, (1, batch, length)).astype(np.int32)
  batch_arrays = {"student_ids": ids, "student_mask": np.ones_like(ids),
                  "teacher_ids": ids[:, ::-1].copy(), "teacher_mask": np.ones_like(ids)}
  step = make_train_step(config, models, optimizer)
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], teacher_params, batch_arrays, rng)
    jax.block_until_ready(metrics["loss"])

  return median_seconds(run, repeats, warmup=2), models.student.config


def torch_step(checkpoint: str, batch: int, length: int, *, iterations: int,
               repeats: int) -> float:
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
  ids = torch.from_numpy(np.random.default_rng(0).integers(1000, 20000, (batch, length)))
  mask = torch.ones_like(ids)
  epsilon = 0.05
  log_a = torch.full((batch, length), -np.log(length))

  def sinkhorn(cost):
    f, g = torch.zeros_like(log_a), torch.zeros_like(log_a)
    for _ in range(iterations):
      f = -epsilon * torch.logsumexp(log_a[:, None, :] + (g[:, None, :] - cost) / epsilon, -1)
      g = -epsilon * torch.logsumexp(log_a[:, :, None] + (f[:, :, None] - cost) / epsilon, 1)
    return torch.exp(log_a[:, :, None] + log_a[:, None, :] +
                     (f[:, :, None] + g[:, None, :] - cost) / epsilon)

  def run():
    with torch.no_grad():
      t = teacher(input_ids=ids.flip(1), attention_mask=mask).last_hidden_state
    s = student(input_ids=ids, attention_mask=mask).last_hidden_state
    norm = torch.nn.functional.normalize
    cost = 1 - norm(s, dim=-1) @ norm(t, dim=-1).transpose(1, 2)
    with torch.no_grad():
      plan = sinkhorn(cost.detach())
    loss = (plan * cost).sum((1, 2)).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

  return median_seconds(run, repeats, warmup=2)


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
  args = parser.parse_args()
  checkpoint = args.checkpoint or str(minilm_checkpoint_dir())
  if args.breakdown:
    breakdown(checkpoint, args.batch, args.length, repeats=args.repeats,
              with_torch=not args.no_torch)
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
