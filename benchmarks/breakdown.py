"""Our encoder's forward and forward+backward alone, against torch's: where the step goes.

  python benchmarks/breakdown.py                 # MiniLM-L6, B=32, L=64
  python benchmarks/breakdown.py --repeats 7 --no-torch

How it is timed: common.py.
"""

from __future__ import annotations

from common import (argument_parser, flax_dense_layers, import_torch, interleaved_medians,
                    parse_args, run, without_dropout)

if __name__ == "__main__":
  # Before jax, numpy or torch start threads (see common.py).
  ARGS = parse_args(argument_parser(__doc__.splitlines()[0], "--no-torch", "--flax-dense"))

import os

import jax
import jax.numpy as jnp
import numpy as np

from optical_jax import load_encoder


def breakdown(checkpoint: str, batch: int, length: int, *, repeats: int, with_torch: bool) -> None:
  """Encoder forward and forward+backward alone, ours and torch's: where the step goes."""
  encoder = load_encoder(checkpoint)
  ids = np.random.default_rng(0).integers(1000, 20000, (batch, length)).astype(np.int32)
  mask = np.ones_like(ids)
  apply = lambda params: encoder.apply(params, ids, mask)
  forward = jax.jit(apply)
  backward = jax.jit(jax.grad(lambda params: jnp.sum(apply(params) ** 2)))
  flax_backward = jax.jit(jax.grad(lambda params: jnp.sum(apply(params) ** 2)))
  with flax_dense_layers():
    jax.block_until_ready(flax_backward(encoder.params))  # traced and compiled here

  def frozen_embeddings(params, table):  # no gradient for the word-embedding table
    embeddings = {**params["embeddings"], "word_embeddings": {"embedding": table}}
    return jax.grad(lambda p: jnp.sum(apply({**p, "embeddings": embeddings}) ** 2))(params)

  frozen = jax.jit(frozen_embeddings)
  table = encoder.params["embeddings"]["word_embeddings"]["embedding"]
  rows = [
      ("JAX encoder forward", lambda: forward(encoder.params).block_until_ready()),
      ("JAX encoder forward + backward", lambda: jax.block_until_ready(backward(encoder.params))),
      ("JAX forward + backward, Flax's nn.Dense layers",
       lambda: jax.block_until_ready(flax_backward(encoder.params))),
      ("JAX forward + backward, word embeddings frozen",
       lambda: jax.block_until_ready(frozen(encoder.params, table))),
  ]
  if with_torch:
    torch = import_torch()
    from transformers import AutoModel
    model = without_dropout(AutoModel.from_pretrained(checkpoint))
    t_ids, t_mask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()

    def torch_forward():
      with torch.no_grad():
        model(input_ids=t_ids, attention_mask=t_mask)

    def torch_backward():
      (model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state ** 2).sum().backward()
      model.zero_grad(set_to_none=True)

    rows += [("PyTorch encoder forward", torch_forward),
             ("PyTorch encoder forward + backward", torch_backward)]
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, B={batch} L={length}; medians of "
        f"{repeats}, the pieces taking turns")
  print("| piece | median (s) |")
  print("|---|---|")
  for name, seconds in interleaved_medians(dict(rows), repeats, warmup=2).items():
    print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
  run(ARGS, lambda checkpoint: breakdown(checkpoint, ARGS.batch, ARGS.length,
                                         repeats=ARGS.repeats, with_torch=not ARGS.no_torch))
