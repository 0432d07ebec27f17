"""The full distillation step, ours vs a PyTorch reference doing the same work, in one run.

  python benchmarks/train_step.py                      # MiniLM-L6, B=32, L=64, float32
  python benchmarks/train_step.py --batch 64 --length 128 --dtype bfloat16 --no-torch
  python benchmarks/train_step.py --grid               # scaling table (batch, length, iters)
  python benchmarks/train_step.py --breakdown          # forward vs backward, ours and torch's
  python benchmarks/train_step.py --profile            # our forward+backward by kind of op
  python benchmarks/train_step.py --profile --flax-dense   # ... with Flax's dense layers
  python benchmarks/train_step.py --kernels            # the encoder's matmuls, XLA vs torch
  python benchmarks/train_step.py --features           # bfloat16 and remat vs float32
  python benchmarks/train_step.py --epoch              # demo-bitext epoch: buckets, teacher cache
  python benchmarks/train_step.py --architecture mbert-base --dtype bfloat16 --no-torch \
      --peak-tflops 989                                # MFU at mBERT-base size (H100 bf16 peak)

Step = frozen teacher forward + student forward/backward + OT loss (1 - cos, log-domain
Sinkhorn, detached plan) + clipped AdamW update. Times are medians after compilation /
warm-up. FLOPs are counted analytically (encoder matmuls only), and the fraction of the
machine's peak uses a large matmul measured in the same run. On CPU, `--host-memory` is the
train loop's `config.runtime.host_memory` (default "retain": glibc keeps freed memory), set for the
whole process, so PyTorch runs under it too; "release" leaves malloc as it is. torch
(`pip install torch==2.13.0`) is a benchmark-only dependency.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from optical_jax import host_memory
from optical_jax.config import base_config

# Published encoder sizes, timed with random weights (nothing to download): config.json fields.
ARCHITECTURES = {
    "mbert-base": dict(model_type="bert", vocab_size=119547, hidden_size=768,
                       num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       max_position_embeddings=512, type_vocab_size=2, pad_token_id=0),
    "xlmr-base": dict(model_type="xlm-roberta", vocab_size=250002, hidden_size=768,
                      num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                      max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                      layer_norm_eps=1e-5),
}


# The epoch table's length buckets: the train loop's default, and steps of 8 tokens.
EPOCH_BUCKETS = {"bucketed": base_config().data.length_buckets,
                 "buckets in steps of 8": tuple(range(8, 513, 8))}


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", default=None, help="HF checkpoint (default: MiniLM-L6)")
  parser.add_argument("--architecture", choices=sorted(ARCHITECTURES),
                      help="instead of --checkpoint: this published size, random weights")
  parser.add_argument("--peak-tflops", type=float, default=None,
                      help="the device's nominal peak for --dtype: adds MFU to the step table")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--iterations", type=int, default=50)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--remat", action="store_true")
  parser.add_argument("--microbatch-size", type=int, default=0,
                      help="also time our step split into chunks of this many examples "
                           "(config.train.microbatch_size), in turns with the others; --grid: "
                           "split ours where the batch is larger")
  parser.add_argument("--attention", default="xla",
                      help="attention kernel (config.model.attention): xla, or cudnn on NVIDIA GPUs "
                           "with --dtype bfloat16")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
  parser.add_argument("--host-memory", choices=host_memory.SETTINGS,
                      default=base_config().runtime.host_memory,
                      help="CPU: glibc malloc keeps freed memory (retain, the train loop's "
                           "default) or not (release); for the whole process, torch included")
  mode = parser.add_mutually_exclusive_group()  # instead of the step table; one at a time
  mode.add_argument("--grid", action="store_true", help="scaling table instead")
  parser.add_argument("--plot", default=None, help="--grid: also draw it into this PNG")
  mode.add_argument("--breakdown", action="store_true",
                      help="encoder forward / forward+backward alone, ours and torch's")
  mode.add_argument("--profile", action="store_true",
                      help="our encoder forward+backward by kind of op (jax.profiler trace)")
  mode.add_argument("--kernels", action="store_true",
                      help="the encoder's matmuls alone, XLA's vs torch's, float32 and bfloat16")
  mode.add_argument("--features", action="store_true",
                      help="bfloat16 and remat against float32 (time, temporary memory)")
  parser.add_argument("--flax-dense", action="store_true",
                      help="use Flax's nn.Dense layers (our encoder before its dense VJP)")
  mode.add_argument("--epoch", action="store_true",
                      help="epoch time on the demo bitext (bucketing, teacher token cache)")
  parser.add_argument("--sample", type=int, default=16,
                      help="--epoch: PyTorch batches timed to estimate its mean step")
  args = parser.parse_args()
  if args.architecture and args.checkpoint:
    parser.error("give --checkpoint or --architecture, not both")
  return args


if __name__ == "__main__":
  # Before jax, numpy or torch start threads: glibc fixes a thread's malloc arena when the
  # thread first allocates.
  ARGS = parse_args()
  ARGS.host_memory_changed = host_memory.configure(ARGS.host_memory)

import jax
import jax.numpy as jnp
import numpy as np

from optical_jax.assets import minilm_checkpoint_dir
from optical_jax.models.encoder import encoder_flops_per_token
from optical_jax.models.student import build_models
from optical_jax.training.state import initial_state, make_optimizer
from optical_jax.training.step import (CPU_SCHEDULES, compiled_per_shape, data_mesh,
                                       global_batch, make_train_step, replicate,
                                       step_compiler_options)
from timing import cpu_description, interleaved_medians, median_seconds, wall_times


def random_checkpoint(architecture: str) -> str:
  """A checkpoint directory of `ARCHITECTURES[architecture]` with random weights, written once
  into the cache directory (the step benchmark feeds random token ids: no tokenizer needed)."""
  from optical_jax.models.hf_checkpoint import save_hf_checkpoint
  from optical_jax.models.encoder import Encoder, EncoderConfig
  directory = (Path(base_config().runtime.cache_dir).expanduser() / "benchmark_checkpoints"
               / architecture)
  if not (directory / "config.json").is_file():
    config = EncoderConfig.from_hf_dict(ARCHITECTURES[architecture], source=architecture)
    ids = jnp.ones((1, 2), jnp.int32)
    params = jax.jit(Encoder(config).init)(jax.random.PRNGKey(0), ids, ids)["params"]
    save_hf_checkpoint(directory, params, config, hf_config=ARCHITECTURES[architecture])
  return str(directory)


def matmul_peak(dtype=jnp.float32, n: int | None = None, repeats: int = 10) -> float:
  """FLOP/s of a large square matmul, its fastest of `repeats` runs: the machine's practical
  peak for this dtype (a median would move with the noise of a shared machine). Accelerators
  get a larger matmul, so that launching it is a small part of its time."""
  n = n or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  return 2 * n ** 3 / min(wall_times(lambda: f(a).block_until_ready(), repeats))


def step_flops(config, batch: int, length: int) -> float:
  """Teacher forward (1x) + student forward and backward (3x) encoder FLOPs."""
  return 4 * encoder_flops_per_token(config, length) * batch * length


def jax_reference(checkpoint: str, *, dtype: str = "float32", iterations: int = 50,
                  remat: bool = False, compiler_options: dict[str, str] | None = None,
                  attention: str = "xla", microbatch_size: int = 0):
  """Our distillation step `step(batch) -> loss` (the train loop's compiled data-parallel
  step) and the models. `batch` holds `[batch, length]` arrays (the global batch); with `teacher_tokens` in it,
  the teacher's forward is skipped (the cached path). `compiler_options` are XLA options for
  compiling the step (`--xla_*` flags without `--`); default: the train loop's."""
  config = base_config()
  m = config.model
  m.teacher, m.dtype, m.remat, m.dropout, m.attention = checkpoint, dtype, remat, 0.0, attention
  config.train.microbatch_size = microbatch_size
  config.loss, config.train.num_train_steps = "ot", 1000
  config.ot.max_iterations, config.ot.threshold = iterations, 0.0  # fixed iterations
  models = build_models(config)
  optimizer = make_optimizer(config)
  mesh = data_mesh()
  holder = {"state": replicate(initial_state(models, optimizer), mesh)}
  teacher_params = replicate(models.teacher.params, mesh)
  rng = replicate(jax.random.PRNGKey(0), mesh)
  train_step = compiled_per_shape(
      make_train_step(config, models, optimizer, mesh),
      step_compiler_options(config) if compiler_options is None else compiler_options)

  def step(batch_arrays):
    holder["state"], metrics = train_step(holder["state"], teacher_params,
                                          global_batch(batch_arrays, mesh), rng)
    return jax.block_until_ready(metrics["loss"])

  def temporary_bytes(batch_arrays) -> int:
    """The compiled step's temporary buffers: mostly activations kept for the backward."""
    executable = train_step.executable_for(holder["state"], teacher_params,
                                           global_batch(batch_arrays, mesh), rng)
    return executable.memory_analysis().temp_size_in_bytes

  step.temporary_bytes = temporary_bytes
  return step, models


def random_batch(batch: int, length: int) -> dict[str, np.ndarray]:
  """A full-length global batch `[batch, length]`, which the step splits over the devices."""
  devices = jax.local_device_count()
  if batch % devices:
    raise SystemExit(f"batch {batch} does not split evenly over {devices} devices")
  ids = np.random.default_rng(0).integers(1000, 20000, (batch, length)).astype(np.int32)
  return {"student_ids": ids, "student_mask": np.ones_like(ids),
          "teacher_ids": ids[:, ::-1].copy(), "teacher_mask": np.ones_like(ids)}


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


GRID = {"batch": [(32, 64, 50), (64, 64, 50), (128, 64, 50), (256, 64, 50)],
        "length": [(32, 32, 50), (32, 64, 50), (32, 128, 50), (32, 256, 50)],
        "Sinkhorn iterations": [(32, 64, 10), (32, 64, 50), (32, 64, 200)]}


def grid(checkpoint: str, peak: float, *, dtype: str, remat: bool, repeats: int,
         plot: str | None, with_torch: bool, microbatch_size: int = 0) -> None:
  """Step time against batch, length and Sinkhorn iterations, each varied from B=32, L=64,
  50 iterations, ours and (`with_torch`) the PyTorch reference's, timed in turns at each
  point; with `plot`, a PNG of the three against the encoder matmuls at peak. With
  `microbatch_size`, ours splits batches larger than that into chunks of it."""
  if microbatch_size:
    print(f"our step in microbatches of {microbatch_size} (where the batch is larger)")
  torch_columns = " PyTorch step (s) | ours vs PyTorch |" if with_torch else ""
  print("| batch | length | Sinkhorn iters | step (s) | tokens/s | GFLOP/s | of peak |"
        + torch_columns)
  print("|---|---|---|---|---|---|---|" + ("---|---|" if with_torch else ""))
  # (batch, length, iterations) -> (our step, PyTorch's step or None, encoder matmuls at peak)
  measured = {}
  for batch, length, iters in dict.fromkeys(p for points in GRID.values() for p in points):
    step, models = jax_reference(checkpoint, dtype=dtype, iterations=iters, remat=remat,
                                 microbatch_size=microbatch_size)
    batch_arrays = random_batch(batch, length)
    timed = {"ours": lambda: step(batch_arrays)}
    if with_torch:
      timed["torch"] = torch_step(checkpoint, batch, length, iterations=iters, dtype=dtype)
    seconds = interleaved_medians(timed, repeats, warmup=2)
    flops = step_flops(models.student.config, batch, length)
    measured[batch, length, iters] = seconds["ours"], seconds.get("torch"), flops / peak
    print(f"| {batch} | {length} | {iters} | {seconds['ours']:.3f} | "
          f"{batch * length / seconds['ours']:.0f} | {flops / seconds['ours'] / 1e9:.1f} | "
          f"{flops / seconds['ours'] / peak:.0%} |" + (
              f" {seconds['torch']:.3f} | {seconds['torch'] / seconds['ours']:.2f}x |"
              if with_torch else ""), flush=True)
  if plot:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(GRID), figsize=(4 * len(GRID), 3.6))
    for ax, (axis, points) in zip(axes, GRID.items()):
      x = [p[list(GRID).index(axis)] for p in points]
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
    fig.suptitle(f"{jax.devices()[0].platform}, {dtype}; each panel varies one of B=32, L=64, "
                 "50 iterations")
    fig.tight_layout()
    fig.savefig(plot, dpi=110)
    print(f"wrote {plot}")


def import_torch():
  """torch, using every core (as XLA does)."""
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  return torch


def torch_reference(checkpoint: str, *, iterations: int, dtype: str = "float32"):
  """A PyTorch distillation step `step(student_ids, student_mask, teacher_ids, teacher_mask)`
  on int64 tensors: transformers' models, log-domain Sinkhorn with masked uniform marginals,
  detached plan, clipped AdamW. With `dtype` "bfloat16" the encoders run under CPU autocast
  (bfloat16 compute, float32 weights: ours' `config.model.dtype`), the loss in float32."""
  torch = import_torch()
  autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
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
    with torch.no_grad(), autocast():
      t = teacher(input_ids=teacher_ids, attention_mask=teacher_mask).last_hidden_state.float()
    with autocast():
      s = student(input_ids=student_ids, attention_mask=student_mask).last_hidden_state.float()
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
               dtype: str = "float32"):
  """The PyTorch reference step on `random_batch`'s token ids, as a no-argument call."""
  import torch
  step = torch_reference(checkpoint, iterations=iterations, dtype=dtype)
  arrays = {k: torch.from_numpy(v.reshape(-1, length)).long()
            for k, v in random_batch(batch, length).items()}
  return lambda: step(arrays["student_ids"], arrays["student_mask"], arrays["teacher_ids"],
                      arrays["teacher_mask"])


@contextlib.contextmanager
def flax_dense_layers():
  """Traces our encoder with Flax's `nn.Dense` / `nn.DenseGeneral` (the same parameters)
  instead of `optical_jax.modeling.Dense`: the backward pass before its custom VJP."""
  import flax.linen as nn
  from optical_jax import modeling
  ours = modeling.Dense

  def flax_dense(features, dtype, name):
    if isinstance(features, int):
      return nn.Dense(features, dtype=dtype, name=name)
    return nn.DenseGeneral(features, dtype=dtype, name=name)

  modeling.Dense = flax_dense
  try:
    yield
  finally:
    modeling.Dense = ours


def breakdown(checkpoint: str, batch: int, length: int, *, repeats: int, with_torch: bool) -> None:
  """Encoder forward and forward+backward alone, ours and torch's: where the step goes."""
  from optical_jax import load_encoder
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
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, B={batch} L={length}; medians of "
        f"{repeats}, the pieces taking turns")
  print("| piece | median (s) |")
  print("|---|---|")
  for name, seconds in interleaved_medians(dict(rows), repeats, warmup=2).items():
    print(f"| {name} | {seconds:.3f} |")


def _ratio(value: float) -> str:
  """Two decimals, or two significant digits below 0.1, so that a lopsided ratio (torch's
  bfloat16 attention backward) does not print as 0.00."""
  return f"{value:.2f}" if value >= 0.1 else np.format_float_positional(
      value, precision=2, fractional=False)


def kernels(checkpoint: str, batch: int, length: int, *, repeats: int) -> None:
  """The encoder's matmuls one at a time, and one layer's attention (forward + backward),
  XLA's against torch's, in float32 and bfloat16: whether the step's gap to PyTorch on this
  machine is in the kernels themselves (the libraries each calls: YNNPACK in XLA:CPU, MKL or
  oneDNN in torch's CPU build, torch's fused `scaled_dot_product_attention`)."""
  from optical_jax.models.hf_checkpoint import read_hf_config
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
            f"{_ratio(seconds['xla'] / seconds['torch'])}x |", flush=True)


def _op_kind(name: str) -> str:
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
  import glob
  import gzip
  import json
  import re
  import tempfile
  from optical_jax import load_encoder
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
      kind = _op_kind(event["name"])
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


def epoch(checkpoint: str, batch: int, length: int, *, iterations: int, repeats: int,
          sample: int, with_torch: bool) -> None:
  """One epoch of distillation on the demo's 28.8k English–Chichewa pairs, estimated as
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
  from optical_jax import load_encoder
  from optical_jax.assets import resolve
  from optical_jax.data.batching import BucketedBatches, tokenize_cached
  from optical_jax.data.bitext import read_pairs
  from optical_jax.shapes import pad_sequences
  rows = read_pairs(resolve("bible:train.tsv", base_config().runtime.cache_dir),
                    ("student", "teacher"))
  encoder = load_encoder(checkpoint)
  tokenize = lambda texts: tokenize_cached(encoder.tokenizer, texts, max_length=length,
                                          cache_dir=None, tag="")
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
            f"; {name} {dict(sorted(counts.items()))}" for name, (_, counts, _) in bucketed.items()))

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


def main(args: argparse.Namespace) -> None:
  with flax_dense_layers() if args.flax_dense else contextlib.nullcontext():
    run(args, args.checkpoint or (random_checkpoint(args.architecture) if args.architecture
                                  else str(minilm_checkpoint_dir())))


def run(args: argparse.Namespace, checkpoint: str) -> None:
  print(f"host memory: {args.host_memory}" + (
      " (glibc malloc keeps freed memory, for this whole process)" if args.host_memory_changed
      else " (malloc as it is)"))
  print(f"CPU: {cpu_description()}")
  if args.breakdown:
    breakdown(checkpoint, args.batch, args.length, repeats=args.repeats,
              with_torch=not args.no_torch)
    return
  if args.profile:
    profile(checkpoint, args.batch, args.length, repeats=args.repeats)
    return
  if args.kernels:
    kernels(checkpoint, args.batch, args.length, repeats=args.repeats)
    return
  if args.features:
    features(checkpoint, args.batch, lengths=(args.length, 4 * args.length),
             iterations=args.iterations, repeats=args.repeats)
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
    grid(checkpoint, peak, dtype=args.dtype, remat=args.remat, repeats=args.repeats,
         plot=args.plot, with_torch=not args.no_torch, microbatch_size=args.microbatch_size)
    return
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
  main(ARGS)
