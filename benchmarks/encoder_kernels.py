"""The encoder's matmuls and one layer's attention alone, XLA's vs torch's, in both dtypes.

  python benchmarks/encoder_kernels.py           # MiniLM-L6's shapes at B=32, L=64
  python benchmarks/encoder_kernels.py --repeats 10

Only the checkpoint's config is read (its sizes); torch is needed. How it is timed: common.py.
"""

from __future__ import annotations

from common import argument_parser, import_torch, interleaved_medians, parse_args, run

if __name__ == "__main__":
  # Before jax, numpy or torch start threads (see common.py).
  ARGS = parse_args(argument_parser(__doc__.splitlines()[0]))

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from optical_jax.models.hf_checkpoint import read_hf_config


def ratio(value: float) -> str:
  """Two decimals, or two significant digits below 0.1, so that a lopsided ratio (torch's
  bfloat16 attention backward) does not print as 0.00."""
  return f"{value:.2f}" if value >= 0.1 else np.format_float_positional(
      value, precision=2, fractional=False)


def kernels(checkpoint: str, batch: int, length: int, *, repeats: int) -> None:
  """The encoder's matmuls one at a time, and one layer's attention (forward + backward),
  XLA's against torch's, in float32 and bfloat16: whether the step's gap to PyTorch on this
  machine is in the kernels themselves (the libraries each calls: YNNPACK in XLA:CPU, MKL or
  oneDNN in torch's CPU build, torch's fused `scaled_dot_product_attention`)."""
  torch = import_torch()
  config, _ = read_hf_config(Path(checkpoint))
  tokens, hidden = batch * length, config.hidden_size
  heads = config.num_attention_heads
  head_size = hidden // heads
  matmuls = {  # name -> (batch of matrices, m, k, n)
      "q/k/v, attention output: tokens x hidden x hidden": (1, tokens, hidden, hidden),
      "feed-forward in: tokens x hidden x intermediate":
          (1, tokens, hidden, config.intermediate_size),
      "feed-forward out: tokens x intermediate x hidden":
          (1, tokens, config.intermediate_size, hidden),
      "weight gradient: hidden x tokens x intermediate":
          (1, hidden, tokens, config.intermediate_size),
      "attention scores, per head: length x head size x length":
          (batch * heads, length, head_size, length),
  }
  matmul = jax.jit(jnp.matmul)
  rng = np.random.default_rng(0)
  cases = []  # (row name, FLOPs, {dtype: (XLA call, torch call)})
  for name, (count, m, k, n) in matmuls.items():
    stack = (count,) if count > 1 else ()  # a 2-D dot, as the encoder's dense layers run
    a = rng.standard_normal((*stack, m, k), np.float32)
    b = rng.standard_normal((*stack, k, n), np.float32)
    calls = {}
    for dtype, torch_dtype in ((jnp.float32, torch.float32), (jnp.bfloat16, torch.bfloat16)):
      xa, xb = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
      ta, tb = (torch.from_numpy(x).to(torch_dtype) for x in (a, b))
      calls[dtype] = (lambda xa=xa, xb=xb: matmul(xa, xb).block_until_ready(),
                      lambda ta=ta, tb=tb: torch.matmul(ta, tb))
    suffix = f", {count} of them" if count > 1 else ""
    cases.append((f"{name} ({m} x {k} x {n}{suffix})", 2 * count * m * k * n, calls))

  # One layer's attention, forward + backward, with the encoder's call and layout
  # ([batch, length, heads, head size]) against torch's fused kernel ([batch, heads, ...]).
  qkv_cotangent = rng.standard_normal((4, batch, length, heads, head_size), np.float32)
  key_mask = np.ones((batch, 1, 1, length), bool)
  calls = {}
  for dtype, torch_dtype in ((jnp.float32, torch.float32), (jnp.bfloat16, torch.bfloat16)):
    q, k, v, cotangent = (jnp.asarray(x, dtype) for x in qkv_cotangent)
    gradient = jax.jit(jax.grad(lambda q, k, v, cotangent: jnp.sum(
        jax.nn.dot_product_attention(q, k, v, mask=key_mask) * cotangent), argnums=(0, 1, 2)))
    tq, tk, tv = (torch.from_numpy(x).to(torch_dtype).transpose(1, 2).contiguous()
                  .requires_grad_() for x in qkv_cotangent[:3])
    t_cotangent = torch.from_numpy(qkv_cotangent[3]).to(torch_dtype).transpose(1, 2)
    t_mask = torch.from_numpy(key_mask)

    def torch_attention(tq=tq, tk=tk, tv=tv, t_cotangent=t_cotangent):
      (torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=t_mask)
       * t_cotangent).sum().backward()
      tq.grad = tk.grad = tv.grad = None

    calls[dtype] = (lambda q=q, k=k, v=v, c=cotangent, g=gradient:
                    jax.block_until_ready(g(q, k, v, c)), torch_attention)
  # Scores and weighted values, forward (2 matmuls) and backward (4).
  cases.append((f"one layer's attention, forward + backward ({heads} heads of {head_size})",
                6 * 2 * batch * heads * length * length * head_size, calls))

  print(f"B={batch} L={length}, {checkpoint}; GFLOP/s, medians of 3 x {repeats} calls, XLA "
        f"and torch taking turns in blocks of {repeats}")
  print("| kernel (matmul: m x k x n) | dtype | XLA | torch | torch / XLA |")
  print("|---|---|---|---|---|")
  for name, flops, calls in cases:
    for dtype, (xla_call, torch_call) in calls.items():
      # Blocks of calls taking turns, not single calls: right after torch returns, its OpenMP
      # threads still spin on both cores and slowed XLA's next matmul by 30% (one-off).
      seconds = interleaved_medians({"xla": xla_call, "torch": torch_call}, 3, warmup=3,
                                    block=repeats)
      print(f"| {name} | {jnp.dtype(dtype).name} | {flops / seconds['xla'] / 1e9:.0f} | "
            f"{flops / seconds['torch'] / 1e9:.0f} | "
            f"{ratio(seconds['xla'] / seconds['torch'])}x |", flush=True)


if __name__ == "__main__":
  run(ARGS, lambda checkpoint: kernels(checkpoint, ARGS.batch, ARGS.length,
                                       repeats=ARGS.repeats))
