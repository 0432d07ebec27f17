"""Our encoder's forward+backward by kind of op, from a jax.profiler trace.

  python benchmarks/op_profile.py                # MiniLM-L6, B=32, L=64
  python benchmarks/op_profile.py --flax-dense   # ... with Flax's dense layers

How it is timed: common.py.
"""

from __future__ import annotations

from common import argument_parser, median_seconds, parse_args, run

if __name__ == "__main__":
  # Before jax, numpy or torch start threads (see common.py).
  ARGS = parse_args(argument_parser(__doc__.splitlines()[0], "--flax-dense"))

import collections
import glob
import gzip
import json
import os
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from optical_jax import load_encoder


def op_kind(name: str) -> str:
  """The kind of a compiled XLA:CPU op, from the name XLA gives it (its fused ops)."""
  if name.startswith("ynn_fusion"):
    return "matmul, YNNPACK (with fused elementwise ops)"
  if name.startswith("dot"):
    return "matmul, XLA dot (Eigen; its span may cover only the launch)"
  if "broadcast" in name:
    return "broadcasts (zero-filled gradient buffers, biases)"
  if "transpose" in name or "copy" in name:
    return "transposes and copies (layouts)"
  if "scatter" in name:
    return "scatter-add (word-embedding gradient)"
  return "other fusions (elementwise, reductions)"


def profile(checkpoint: str, batch: int, length: int, *, repeats: int) -> None:
  """Where our encoder's forward + backward spends its time: a `jax.profiler` trace of
  `repeats` calls, each compiled op's time summed per kind (over the worker threads, so the
  sum exceeds the wall time when ops overlap), and the compiled program's matmuls by backend."""
  encoder = load_encoder(checkpoint)
  ids = np.random.default_rng(0).integers(1000, 20000, (batch, length)).astype(np.int32)
  mask = np.ones_like(ids)
  gradient = jax.jit(jax.grad(lambda params: jnp.sum(encoder.apply(params, ids, mask) ** 2))
                     ).lower(encoder.params).compile()  # compiled once: timed and read below
  program = gradient.as_text()
  entry = program[program.index("ENTRY"):]
  instructions = set(re.findall(r"%([\w.\-]+) = ", entry))
  wall = median_seconds(lambda: jax.block_until_ready(gradient(encoder.params)), repeats,
                        warmup=2)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(repeats):
        jax.block_until_ready(gradient(encoder.params))
    trace_file = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
    events = json.load(gzip.open(trace_file))["traceEvents"]
  seconds, counts = collections.Counter(), collections.Counter()
  for event in events:
    if event.get("ph") == "X" and event.get("name") in instructions:
      kind = op_kind(event["name"])
      seconds[kind] += event["dur"] / 1e6 / repeats
      counts[kind] += 1 / repeats
  ynn_fusions = len(re.findall(r"%ynn_fusion[.0-9]* = ", entry))
  xla_dots = len(re.findall(r"= \S+ dot\(", entry))
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, B={batch} L={length}; compiled "
        f"gradient program: {ynn_fusions} YNNPACK fusions, {xla_dots} XLA dots")
  print(f"forward + backward: {wall * 1e3:.0f} ms wall (median of {repeats}); "
        f"ops traced: {sum(seconds.values()) * 1e3:.0f} ms summed over threads")
  print("| kind of op | ops per call | ms per call |")
  print("|---|---|---|")
  for kind, total in seconds.most_common():
    print(f"| {kind} | {counts[kind]:.0f} | {total * 1e3:.1f} |")


if __name__ == "__main__":
  run(ARGS, lambda checkpoint: profile(checkpoint, ARGS.batch, ARGS.length,
                                       repeats=ARGS.repeats))
