"""configs/so.py's train step as an accelerator sees it: FLOPs, the physical limit, and how
long the device waits for the host.

  python benchmarks/accelerator.py                 # so.py's shapes: batch 256, length 64
  python benchmarks/accelerator.py --measure       # time the step on a CPU too (slow)
  python benchmarks/accelerator.py --architecture tiny --measure --steps 4   # smoke test

Teacher bge-small (BERT, 30,522 pieces) and student multilingual-e5-small (250,037 pieces),
12 layers, 384 wide, with random weights (nothing to download), computing in bfloat16, loss
ot: so.py's models and step. Printed, in this order:

1. the host's work per step, measured here: building the step's batch (padding, and with the
   teacher token cache its lookup) and putting it on the devices, in ms, and what it ships;
2. FLOPs per step from XLA's cost analysis of the compiled step (teacher forward in the step,
   so.py's setting on accelerators), and the compute-bound step time per device kind at the
   nominal peak and at 40% MFU (estimates: arithmetic, not measurements);
3. the compiled step's memory per device (arguments, outputs, temporaries) for 1 and 8 devices
   (on a CPU host 8 devices are simulated: XLA:CPU's temporaries stand in for the
   accelerator's), and which Colab / TPU-VM devices it fits;
4. on an accelerator (or with --measure): per device count, the bare compiled step on
   pre-staged batches, the train loop's path (prefetch thread, host batches, no reads), MFU,
   and the share of loop time the device waits for the host; then corpus encoding
   passages/s at length 256.
"""

from __future__ import annotations

from common import (ARCHITECTURES, argument_parser, cpu_description, median_seconds, parse_args,
                    random_checkpoint)

import os

# 8 CPU devices for the 8-device memory analysis where the host has no accelerator, unless
# XLA_FLAGS sets a count (the flag only shapes the CPU backend; the other tables then use one
# CPU device, as without it).
SIMULATED = "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "")
if SIMULATED:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

if __name__ == "__main__":
  parser = argument_parser(__doc__.splitlines()[0])
  parser.set_defaults(batch=256, length=64)
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--student", default="e5-small", choices=sorted(ARCHITECTURES))
  parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
  parser.add_argument("--measure", action="store_true",
                      help="time steps and encoding even on a CPU (otherwise estimates only)")
  parser.add_argument("--encode-batch", type=int, default=128,
                      help="passages per device per encoding batch")
  parser.add_argument("--pairs", type=int, default=0,
                      help="pairs in the synthetic bitext (default: 8 batches)")
  ARGS = parse_args(parser)

import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from optical_jax.data.batching import BucketedBatches
from optical_jax.data.teacher_cache import TeacherTokenCache
from optical_jax.files.token_arrays import TokenColumn
from optical_jax.models.student import build_models
from optical_jax.pooling import pool
from optical_jax.training.lowering import so_config
from optical_jax.training.prefetch import Prefetcher
from optical_jax.runtime.mesh import data_mesh
from optical_jax.training.step import global_batch
from optical_jax.training.throughput import PEAK_TFLOPS, peak_flops
from optical_jax.training.trainer import Trainer, build_trainer
from optical_jax.training.input_pipeline import local_batch, token_weights

MFU_ASSUMED = 0.4  # a well-fed transformer step's share of the peak, for the estimates
# Memory per device (GB, 10**9 bytes) of the Colab and TPU-VM devices so.py may run on.
DEVICE_MEMORY = (("TPU v5e-1", 1, 16), ("TPU v6e-1", 1, 32), ("TPU v2-8 (a core)", 8, 8),
                 ("T4", 1, 16), ("L4", 1, 24), ("A100 40GB", 1, 40), ("A100 80GB", 1, 80))
# The share of a device's memory a program may plan for (the runtime keeps some).
USABLE = 0.9


def synthetic_columns(pairs: int, length: int, vocab: dict[str, int], seed: int = 0):
  """Token columns of `pairs` pairs, ~37 teacher tokens a pair as in real bitext."""
  rng = np.random.default_rng(seed)
  columns = {}
  for name, mean in (("student", 40), ("teacher", 37)):
    lengths = np.clip(rng.poisson(mean, pairs), 4, length)
    columns[name] = TokenColumn.from_sequences(
        [rng.integers(5, vocab[name], n) for n in lengths])
  return columns


def median_ms(fn, repeats: int) -> float:
  return median_seconds(fn, repeats) * 1e3


def host_table(models, config, mesh, args) -> tuple[BucketedBatches, dict | None, dict]:
  """The host's per-step work, with and without a warm teacher token cache; also returns the
  batches and their idf token-weight tables (None with uniform marginals)."""
  pairs = args.pairs or 8 * args.batch
  columns = synthetic_columns(pairs, args.length, {
      "student": models.student.config.vocab_size, "teacher": models.teacher.config.vocab_size})
  batches = BucketedBatches(columns, {"student": 0, "teacher": 0}, batch_size=args.batch,
                            max_length=args.length, seed=0, length_buckets=(args.length,))
  # so.py's idf marginals: the tables once, their per-token look-up in every batch.
  weights = token_weights(config, models, batches)
  with tempfile.TemporaryDirectory() as directory:
    cache = TeacherTokenCache(models.teacher, columns["teacher"], directory)
    # Warm it without running the teacher on this host: the lookup's cost is the same.
    cache.tokens[:] = np.random.default_rng(1).normal(size=cache.shape).astype(cache.dtype)
    cache.done[:] = True
    rows = {}
    for name, teacher_cache in (("without the teacher token cache (so.py on accelerators)", None),
                                ("with a warm teacher token cache (CPU default)", cache)):
      batch = local_batch(batches, teacher_cache, 0, weights)
      shipped = sum(v.nbytes for v in batch.values())
      build = median_ms(lambda: local_batch(batches, teacher_cache, 3, weights), args.repeats * 4)
      put = median_ms(lambda: jax.block_until_ready(global_batch(
          local_batch(batches, teacher_cache, 3, weights), mesh)), args.repeats * 4) - build
      rows[name] = (build, max(put, 0.0), shipped)
  print(f"\n### The host's work per step (measured here; {pairs:,} synthetic pairs, batch "
        f"{args.batch}, width {args.length})\n")
  print("| batch | build (ms) | to the devices (ms) | shipped (MiB) |")
  print("|---|---|---|---|")
  for name, (build, put, shipped) in rows.items():
    print(f"| {name} | {build:.2f} | {put:.2f} | {shipped / 2**20:.1f} |")
  return batches, weights, rows


def flops_table(trainer: Trainer, batch, devices: int, args) -> float:
  """FLOPs per step from XLA's cost analysis, and each device kind's compute-bound time."""
  per_device = trainer.flops_for(batch)
  if per_device is None:
    print("\nXLA gives no cost analysis on this backend")
    return 0.0
  total = per_device * devices
  print("\n### FLOPs and the compute bound (estimates: cost analysis / nominal peak)\n")
  print(f"XLA's cost analysis of the compiled step: {total / 1e12:.3g} TFLOP per step "
        f"({per_device / 1e12:.3g} per device x {devices}), batch {args.batch}, length "
        f"{args.length}, {args.dtype}, teacher forward inside the step\n")
  print(f"| device kind | peak {args.dtype} (TFLOP/s per device) | step at the peak, 1 device "
        f"(ms) | step at {MFU_ASSUMED:.0%} MFU, 1 device (ms) | at {MFU_ASSUMED:.0%} MFU, 8 "
        "devices (ms) |")
  print("|---|---|---|---|---|")
  for name, _, bf16, fp32 in PEAK_TFLOPS:
    peak = (bf16 if args.dtype == "bfloat16" else fp32) * 1e12
    print(f"| {name} | {peak / 1e12:g} | {total / peak * 1e3:.2f} | "
          f"{total / peak / MFU_ASSUMED * 1e3:.2f} | {total / 8 / peak / MFU_ASSUMED * 1e3:.2f} |")
  return total


def run_devices() -> list:
  """The devices the tables time: all of them but the 8 simulated CPU devices (one)."""
  return jax.devices()[:1] if SIMULATED and jax.default_backend() == "cpu" else jax.devices()


def step_memory(executable) -> dict[str, int]:
  """Bytes per device of a compiled step: arguments, outputs, temporaries and the peak
  (donated state counted once)."""
  m = executable.memory_analysis()
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)
  return {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
          "temporaries": m.temp_size_in_bytes, "peak": peak}


def memory_table(config, models, batches, weights, one_device_executable, args) -> None:
  """The compiled step's memory per device on 1 and 8 devices, and the devices it fits."""
  rows = {1: step_memory(one_device_executable)}
  devices = [d for d in jax.devices() if d.platform == jax.devices()[0].platform]
  if len(devices) < 8:  # an accelerator host with fewer chips: its CPU backend simulates 8
    devices = jax.devices("cpu")
  if len(devices) >= 8 and args.batch % 8 == 0:
    mesh = data_mesh(devices[:8])
    trainer = build_trainer(config, models, mesh, compiler_options={})
    rows[8] = step_memory(trainer.executable_for(
        global_batch(local_batch(batches, None, 0, weights), mesh)))
  gb = lambda n: f"{n / 1e9:.2f}"
  print(f"\n### Memory per device of the compiled step (XLA's memory analysis, "
        f"{jax.devices()[0].platform} compilation), batch {args.batch}, length {args.length}, "
        f"{args.dtype}\n")
  print("| devices | arguments (GB) | outputs (GB) | temporaries (GB) | peak (GB) | fits "
        f"(peak <= {USABLE:.0%} of the device's memory) |")
  print("|---|---|---|---|---|---|")
  for n, m in rows.items():
    fits = [f"{name} ({memory} GB)" for name, count, memory in DEVICE_MEMORY
            if count == n and m["peak"] <= USABLE * memory * 1e9]
    print(f"| {n} | {gb(m['arguments'])} | {gb(m['outputs'])} | {gb(m['temporaries'])} | "
          f"{gb(m['peak'])} | {', '.join(fits) or 'none of those'} |")


def measured_table(config, models, batches, weights, args) -> None:
  """Per device count: bare step, the loop's path, MFU, device-wait share."""
  print(f"\n### Measured on {jax.devices()[0].device_kind} ({jax.default_backend()})\n")
  print("| devices | bare step (ms) | loop step (ms) | device waits for the host | "
        "tokens/s | MFU |")
  print("|---|---|---|---|---|---|")
  counts = [n for n in (1, 2, 4, 8, 16, 32) if n <= len(run_devices())
            and args.batch % n == 0]
  peak = peak_flops(jax.devices()[0].device_kind, args.dtype)
  for n in counts:
    mesh = data_mesh(jax.devices()[:n])
    trainer = build_trainer(config, models, mesh, compiler_options={})
    staged = [global_batch(local_batch(batches, None, s, weights), mesh) for s in range(4)]
    jax.block_until_ready(trainer.apply(staged[0]))  # compiles
    start = time.perf_counter()
    for s in range(args.steps):  # the compiled step alone
      metrics = trainer.apply(staged[s % len(staged)])
    jax.block_until_ready(metrics)
    bare = (time.perf_counter() - start) / args.steps
    tokens = 0
    build = lambda s: (global_batch(batch := local_batch(batches, None, s, weights), mesh),
                       int(batch["student_mask"].sum() + batch["teacher_mask"].sum()))
    start = time.perf_counter()
    with Prefetcher(build, 0, args.steps, depth=2) as prefetcher:
      for s in range(args.steps):  # the train loop's path between log steps
        batch, count = prefetcher.get(s)
        metrics = trainer.step(batch)  # the step and the non-finite watch
        tokens += count
      jax.block_until_ready((metrics, trainer.first_bad))
    loop = (time.perf_counter() - start) / args.steps
    flops = trainer.flops_for(staged[0])
    mfu = f"{flops / bare / peak:.1%}" if flops and peak else "n/a"
    print(f"| {n} | {bare * 1e3:.1f} | {loop * 1e3:.1f} | {max(0.0, 1 - bare / loop):.0%} | "
          f"{tokens / (loop * args.steps):,.0f} | {mfu} |")


def encoding_table(models, args) -> None:
  """Corpus encoding at length 256: pooled student embeddings of pre-staged batches."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = data_mesh(run_devices())
  student = models.student
  dtype = jnp.dtype(args.dtype)
  params = jax.tree_util.tree_map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, student.params)
  params = jax.device_put(params, NamedSharding(mesh, P()))
  rows = args.encode_batch * len(mesh.devices.flat)
  ids = np.random.default_rng(0).integers(5, student.config.vocab_size, (rows, 256))
  sharding = NamedSharding(mesh, P("data"))
  ids = jax.device_put(ids.astype(np.int32), sharding)
  mask = jax.device_put(np.ones((rows, 256), np.int32), sharding)
  encode = jax.jit(lambda p, i, m: pool(student.apply(p, i, m).astype(jnp.float32), m,
                                        method=student.pooling, normalize=True))
  seconds = median_ms(lambda: jax.block_until_ready(encode(params, ids, mask)),
                      args.repeats) / 1e3
  print(f"\n### Corpus encoding, length 256, {args.dtype}\n")
  print(f"{rows / seconds:,.0f} passages/s ({rows} passages a batch over {len(mesh.devices.flat)} "
        f"device(s)); CIRAL's 827,552 Somali passages: {827_552 / (rows / seconds) / 60:.1f} "
        "min")


def main(args) -> None:
  print(f"CPU: {cpu_description()}")
  print(f"devices: {len(run_devices())} x {jax.devices()[0].device_kind} "
        f"({jax.default_backend()})")
  teacher = random_checkpoint("tiny" if args.architecture == "tiny" else "bge-small")
  student = random_checkpoint("tiny" if args.architecture == "tiny" else args.student)
  config = so_config(teacher, student, dtype=args.dtype, batch=args.batch, length=args.length)
  models = build_models(config)
  mesh = data_mesh(run_devices())  # the 8 simulated CPU devices: the memory table only
  batches, weights, _ = host_table(models, config, mesh, args)
  trainer = build_trainer(config, models, mesh, compiler_options={})
  batch = global_batch(local_batch(batches, None, 0, weights), mesh)
  flops_table(trainer, batch, len(mesh.devices.flat), args)
  memory_table(config, models, batches, weights, trainer.executable_for(batch), args)
  if jax.default_backend() != "cpu" or args.measure:
    measured_table(config, models, batches, weights, args)
    encoding_table(models, args)
  else:
    print("\n(no accelerator here: the step was compiled, not timed; --measure times it on "
          "this CPU)")


if __name__ == "__main__":
  main(ARGS)
