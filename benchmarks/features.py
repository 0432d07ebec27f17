"""bfloat16 and per-layer remat against the float32 step: time and temporary memory.

  python benchmarks/features.py                  # MiniLM-L6, B=32, L=64 and 256
  python benchmarks/features.py --repeats 3

What the step is, and how it is timed: common.py.
"""

from __future__ import annotations

from common import argument_parser, jax_reference, median_seconds, parse_args, random_batch, run

if __name__ == "__main__":
  # Before jax, numpy or torch start threads (see common.py).
  ARGS = parse_args(argument_parser(__doc__.splitlines()[0], "--iterations", "--flax-dense"))

import jax

from optical_jax.config import CPU_SCHEDULES


def features(checkpoint: str, batch: int, *, lengths: tuple[int, ...], iterations: int,
             repeats: int) -> None:
  """Before/after of the speed features meant for accelerators, measured here: bfloat16
  compute (float32 master weights) and per-layer remat, each against the float32 step, in
  time and in the compiled step's temporary memory. On CPU these use the train loop's
  memory-optimised XLA:CPU schedule, and float32 and remat also run under XLA:CPU's default
  schedule (which favours concurrency), the "before" of `config.runtime.xla_cpu_schedule`."""
  # (name, dtype, remat, compiler options); on CPU, "memory" is the train loop's schedule.
  variants = [("float32", "float32", False, None),
              ("bfloat16 compute, float32 weights", "bfloat16", False, None),
              ("float32, per-layer remat", "float32", True, None)]
  if jax.default_backend() == "cpu":
    variants = [(f"{name}, memory-optimised schedule (train loop)", dtype, remat, options)
                for name, dtype, remat, options in variants]
    variants += [("float32, XLA:CPU's default schedule", "float32", False,
                  CPU_SCHEDULES["default"]),
                 ("float32, per-layer remat, XLA:CPU's default schedule", "float32", True,
                  CPU_SCHEDULES["default"])]
  print(f"B={batch}, {iterations} Sinkhorn iterations")
  print("| length | variant | step (s) | time vs float32 | temporary buffers (MiB) |")
  print("|---|---|---|---|---|")
  for length in lengths:
    batch_arrays = random_batch(batch, length)
    baseline = None
    for name, dtype, remat, options in variants:
      step, _ = jax_reference(checkpoint, dtype=dtype, iterations=iterations, remat=remat,
                              compiler_options=options)
      seconds = median_seconds(lambda: step(batch_arrays), repeats, warmup=2)
      baseline = baseline or seconds
      print(f"| {length} | {name} | {seconds:.3f} | {seconds / baseline:.2f}x | "
            f"{step.temporary_bytes(batch_arrays) / 2 ** 20:.0f} |", flush=True)


if __name__ == "__main__":
  run(ARGS, lambda checkpoint: features(
      checkpoint, ARGS.batch, lengths=(ARGS.length, 4 * ARGS.length),
      iterations=ARGS.iterations, repeats=ARGS.repeats))
