"""The full distillation step, ours vs a PyTorch reference doing the same work, in one run.

  python benchmarks/step.py                      # MiniLM-L6, B=32, L=64, float32
  python benchmarks/step.py --batch 64 --length 128 --dtype bfloat16 --no-torch
  python benchmarks/step.py --batch 256 --microbatch-size 32   # ours also in microbatches
  python benchmarks/step.py --architecture mbert-base --dtype bfloat16 --no-torch \
      --peak-tflops 989                          # MFU at mBERT-base size (H100 bf16 peak)

What the step is, and how it is timed and counted: common.py. devices.py reads this table's
`optical_jax (JAX/Flax, ott-jax)` row.
"""

from __future__ import annotations

from common import (argument_parser, device_peak, interleaved_medians, jax_reference,
                    parse_args, random_batch, run, step_flops, torch_step)

if __name__ == "__main__":
  # Before jax, numpy or torch start threads (see common.py).
  parser = argument_parser(__doc__.splitlines()[0], "--iterations", "--dtype", "--remat",
                           "--no-torch", "--flax-dense")
  parser.add_argument("--peak-tflops", type=float, default=None,
                      help="the device's nominal peak for --dtype: adds MFU to the table")
  parser.add_argument("--microbatch-size", type=int, default=0,
                      help="also time our step split into chunks of this many examples "
                           "(config.train.microbatch_size), in turns with the others")
  parser.add_argument("--attention", default="xla",
                      help="attention kernel (config.model.attention): xla, or cudnn on "
                           "NVIDIA GPUs with --dtype bfloat16")
  ARGS = parse_args(parser)

import jax


def step_table(checkpoint: str, args) -> None:
  """Our step (and, with --microbatch-size, our step in microbatches) and PyTorch's, timed in
  turns: seconds, tokens/s, GFLOP/s and the fraction of the measured peak (and of
  --peak-tflops)."""
  peak = device_peak(args.dtype)
  step, models = jax_reference(checkpoint, dtype=args.dtype, iterations=args.iterations,
                               remat=args.remat, attention=args.attention)
  batch_arrays = random_batch(args.batch, args.length)
  ours = "optical_jax (JAX/Flax, ott-jax)"
  timed = {ours: lambda: step(batch_arrays)}
  if args.microbatch_size:
    microbatched, _ = jax_reference(checkpoint, dtype=args.dtype, iterations=args.iterations,
                                    remat=args.remat, attention=args.attention,
                                    microbatch_size=args.microbatch_size)
    ours_microbatched = f"optical_jax, microbatches of {args.microbatch_size}"
    timed[ours_microbatched] = lambda: microbatched(batch_arrays)
  theirs = None
  if not args.no_torch:
    autocast = ", bfloat16 autocast" if args.dtype == "bfloat16" else ""
    theirs = f"PyTorch reference (transformers, torch Sinkhorn{autocast})"
    timed[theirs] = torch_step(checkpoint, args.batch, args.length,
                               iterations=args.iterations, dtype=args.dtype)
  medians = interleaved_medians(timed, args.repeats, warmup=2)
  flops = step_flops(models.student.config, args.batch, args.length)
  print(f"B={args.batch} ({args.batch // jax.local_device_count()} per device) L={args.length} "
        f"Sinkhorn iterations={args.iterations} "
        f"dtype={args.dtype} remat={args.remat} attention={args.attention}; "
        f"{flops / 1e9:.1f} GFLOP per step; "
        f"medians of {args.repeats} steps, the implementations taking turns")
  nominal = args.peak_tflops * 1e12 if args.peak_tflops else None
  mfu_header = f" MFU (of {args.peak_tflops:g} TFLOP/s) |" if nominal else ""
  print(f"| implementation | step (s) | tokens/s | GFLOP/s | of measured peak |{mfu_header}")
  print("|---|---|---|---|---|" + ("---|" if nominal else ""))
  for name, seconds in medians.items():
    mfu = f" {flops / seconds / nominal:.1%} |" if nominal else ""
    print(f"| {name} | {seconds:.3f} | {args.batch * args.length / seconds:.0f} | "
          f"{flops / seconds / 1e9:.1f} | {flops / seconds / peak:.0%} |{mfu}")
  print(f"the step's encoder matmuls alone at the measured peak: {flops / peak:.3f} s")
  if theirs:
    reference = medians[theirs]
    print(f"ours is {reference / medians[ours]:.2f}x the speed of the PyTorch reference; 1.2x "
          f"would be a {reference / 1.2:.3f} s step, {1.2 * flops / reference / peak:.0%} of "
          "peak")
    if args.microbatch_size:
      print(f"ours with microbatches of {args.microbatch_size} is "
            f"{reference / medians[ours_microbatched]:.2f}x the speed of the PyTorch reference")


if __name__ == "__main__":
  run(ARGS, lambda checkpoint: step_table(checkpoint, ARGS))
