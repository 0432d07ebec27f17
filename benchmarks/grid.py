"""Our step's scaling with batch, length and Sinkhorn iterations, against PyTorch's.

  python benchmarks/grid.py                      # float32, ours and PyTorch in turns
  python benchmarks/grid.py --repeats 3 --plot docs/step_scaling.png
  python benchmarks/grid.py --microbatch-size 32 --no-torch

Each point varies one of B=32, L=64, 50 iterations (--batch, --length, --iterations) along
--batches, --lengths or --sinkhorn (`grid_points`). What the step is, and how it is timed and counted: common.py.
"""

from __future__ import annotations

from common import (argument_parser, device_peak, interleaved_medians, jax_reference,
                    parse_args, random_batch, run, step_flops, torch_reference)

if __name__ == "__main__":
  # Before jax, numpy or torch start threads (see common.py).
  parser = argument_parser(__doc__.splitlines()[0], "--dtype", "--remat", "--no-torch",
                           "--flax-dense", "--iterations")
  for name, default, what in (("--batches", "32,64,128,256", "batch sizes"),
                              ("--lengths", "32,64,128,256", "sequence lengths"),
                              ("--sinkhorn", "10,50,200", "Sinkhorn iteration counts")):
    parser.add_argument(name, default=default, help=f"the {what} of the grid, comma-separated")
  parser.add_argument("--plot", default=None, help="also draw the table into this PNG")
  parser.add_argument("--microbatch-size", type=int, default=0,
                      help="split our step into chunks of this many examples "
                           "(config.train.microbatch_size) where the batch is larger")
  ARGS = parse_args(parser)

import jax



def grid_points(base: tuple[int, int, int], batches, lengths, iterations) -> dict:
  """{axis: [(batch, length, iterations), ...]}: `base` varied along one axis at a time."""
  batch, length, iters = base
  return {"batch": [(b, length, iters) for b in batches],
          "length": [(batch, n, iters) for n in lengths],
          "Sinkhorn iterations": [(batch, length, i) for i in iterations]}


def torch_call(step, batch: int, length: int):
  """`step` (`torch_reference`'s) on `random_batch(batch, length)`, as a no-argument call."""
  import torch
  arrays = {k: torch.from_numpy(v).long() for k, v in random_batch(batch, length).items()}
  return lambda: step(arrays["student_ids"], arrays["student_mask"], arrays["teacher_ids"],
                      arrays["teacher_mask"])


def grid(checkpoint: str, peak: float, points: dict, *, dtype: str, remat: bool, repeats: int,
         plot: str | None, with_torch: bool, microbatch_size: int = 0) -> None:
  """Step time against batch, length and Sinkhorn iterations at `points` (`grid_points`),
  ours and (`with_torch`) the PyTorch reference's, timed in turns at each
  point; with `plot`, a PNG of the three against the encoder matmuls at peak. With
  `microbatch_size`, ours splits batches larger than that into chunks of it."""
  if microbatch_size:
    print(f"our step in microbatches of {microbatch_size} (where the batch is larger)")
  torch_columns = " PyTorch step (s) | ours vs PyTorch |" if with_torch else ""
  print("| batch | length | Sinkhorn iters | step (s) | tokens/s | GFLOP/s | of peak |"
        + torch_columns)
  print("|---|---|---|---|---|---|---|" + ("---|---|" if with_torch else ""))
  # (batch, length, iterations) -> (our step, PyTorch's step or None, encoder matmuls at peak)
  # references: our step (key: iterations) and PyTorch's (key: ("torch", iterations))
  measured, references = {}, {}
  for batch, length, iters in dict.fromkeys(p for axis in points.values() for p in axis):
    if iters not in references:
      references[iters] = jax_reference(checkpoint, dtype=dtype, iterations=iters, remat=remat,
                                         microbatch_size=microbatch_size)
    step, models = references[iters]
    batch_arrays = random_batch(batch, length)
    timed = {"ours": lambda: step(batch_arrays)}
    if with_torch:  # PyTorch's models loaded once per iteration count, as ours
      if ("torch", iters) not in references:
        references["torch", iters] = torch_reference(checkpoint, iterations=iters, dtype=dtype)
      timed["torch"] = torch_call(references["torch", iters], batch, length)
    seconds = interleaved_medians(timed, repeats, warmup=2)
    flops = step_flops(models.student.config, batch, length)
    measured[batch, length, iters] = seconds["ours"], seconds.get("torch"), flops / peak
    print(f"| {batch} | {length} | {iters} | {seconds['ours']:.3f} | "
          f"{batch * length / seconds['ours']:.0f} | {flops / seconds['ours'] / 1e9:.1f} | "
          f"{flops / seconds['ours'] / peak:.0%} |" + (
              f" {seconds['torch']:.3f} | {seconds['torch'] / seconds['ours']:.2f}x |"
              if with_torch else ""), flush=True)
  if plot:
    draw(measured, points, plot, dtype=dtype, with_torch=with_torch)


def draw(measured: dict, points: dict, plot: str, *, dtype: str, with_torch: bool) -> None:
  """`grid`'s `measured` times as three panels, one per axis of `points`, into the PNG
  `plot`."""
  grid_axes = points  # `points` below: one axis's
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(grid_axes), figsize=(4 * len(grid_axes), 3.6))
  for ax, (axis, points) in zip(axes, grid_axes.items()):
    x = [p[list(grid_axes).index(axis)] for p in points]
    ax.plot(x, [measured[p][0] for p in points], marker="o", label="our step")
    if with_torch:
      ax.plot(x, [measured[p][1] for p in points], marker="s", label="PyTorch's step")
    ax.plot(x, [measured[p][2] for p in points], ls="--", label="encoder matmuls at peak")
    ax.set(xlabel=axis, ylabel="step (s)", xscale="log")
    ax.set_xticks(x, [str(v) for v in x])
    ax.minorticks_off()
    if axis == "Sinkhorn iterations":  # flat: a linear axis from 0 shows how flat
      ax.set_ylim(bottom=0)
    else:  # batch and length: the slopes on log-log axes show the growth
      ax.set_yscale("log")
      times = [t for p in points for t in measured[p] if t is not None]
      ticks = [t for t in (0.25, 0.5, 1, 2, 4, 8, 16, 32)
               if min(times) / 2 <= t <= 2 * max(times)]
      ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
      ax.minorticks_off()
  axes[0].legend()
  # The base point: the length axis keeps its batch, the batch axis its length and iterations.
  base = (grid_axes["length"][0][0], *grid_axes["batch"][0][1:])
  fig.suptitle(f"{jax.devices()[0].platform}, {dtype}; each panel varies one of B={base[0]}, "
               f"L={base[1]}, {base[2]} iterations")
  fig.tight_layout()
  fig.savefig(plot, dpi=110)
  print(f"wrote {plot}")


if __name__ == "__main__":
  numbers = lambda text: [int(x) for x in text.split(",")]
  POINTS = grid_points((ARGS.batch, ARGS.length, ARGS.iterations), numbers(ARGS.batches),
                       numbers(ARGS.lengths), numbers(ARGS.sinkhorn))
  run(ARGS, lambda checkpoint: grid(
      checkpoint, device_peak(ARGS.dtype), POINTS, dtype=ARGS.dtype, remat=ARGS.remat,
      repeats=ARGS.repeats, plot=ARGS.plot, with_torch=not ARGS.no_torch,
      microbatch_size=ARGS.microbatch_size))
