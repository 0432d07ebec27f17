"""Shared by the benchmark scripts (run them as `python benchmarks/NAME.py`): timing, the CPU
line, and for the step benchmarks their common options and set-up, our step and the PyTorch
reference step.

The step benchmarks, one table each: step.py (ours vs PyTorch), grid.py (scaling),
breakdown.py (forward vs backward), op_profile.py (our forward+backward by kind of op),
encoder_kernels.py (the encoder's matmuls, XLA vs torch), features.py (bfloat16 and remat),
epoch.py (the demo-bitext epoch); devices.py runs step.py per device count.

Step = frozen teacher forward + student forward/backward + OT loss (1 - cos, log-domain
Sinkhorn, detached plan) + clipped AdamW update. Times are medians after compilation /
warm-up. FLOPs are counted analytically (encoder matmuls only), and the fraction of the
machine's peak uses a large matmul measured in the same run. On CPU, `--host-memory` is the
train loop's `config.runtime.host_memory` (default "retain": glibc keeps freed memory), set for the
whole process, so PyTorch runs under it too; "release" leaves malloc as it is. torch
(`pip install torch==2.13.0`) is a benchmark-only dependency.

This module imports jax, numpy and torch only inside its functions: a script imports it,
applies `--host-memory` with `parse_args` and only then imports those (glibc fixes a thread's
malloc arena when the thread first allocates).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time

from optical_jax.config import base_config
from optical_jax.files.layout import CacheDir
from optical_jax.runtime import host_memory

# The instruction sets that decide which matmul kernels a CPU library can pick.
_MATMUL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16")

# Published encoder sizes, timed with random weights (nothing to download): config.json fields.
ARCHITECTURES = {
    "mbert-base": dict(model_type="bert", vocab_size=119547, hidden_size=768,
                       num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       max_position_embeddings=512, type_vocab_size=2, pad_token_id=0),
    "xlmr-base": dict(model_type="xlm-roberta", vocab_size=250002, hidden_size=768,
                      num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                      max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                      layer_norm_eps=1e-5),
    # configs/so.py's teacher (BAAI/bge-small-en-v1.5) and student (multilingual-e5-small).
    "bge-small": dict(model_type="bert", vocab_size=30522, hidden_size=384,
                      num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536,
                      max_position_embeddings=512, type_vocab_size=2, pad_token_id=0),
    "e5-small": dict(model_type="bert", vocab_size=250037, hidden_size=384,
                     num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536,
                     max_position_embeddings=512, type_vocab_size=2, pad_token_id=0),
    # A tiny pair for smoke tests of the scripts.
    "tiny": dict(model_type="bert", vocab_size=1000, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=64, max_position_embeddings=512,
                 type_vocab_size=2, pad_token_id=0),
}

# Options that more than one step benchmark takes; `argument_parser` adds those a script names.
OPTIONS = {
    "--iterations": dict(type=int, default=50),
    "--dtype": dict(default="float32", choices=["float32", "bfloat16"]),
    "--remat": dict(action="store_true"),
    "--no-torch": dict(action="store_true", help="skip the PyTorch reference"),
    "--flax-dense": dict(action="store_true",
                         help="use Flax's nn.Dense layers (our encoder before its dense VJP)"),
}


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The CPU in one line: vendor, model name, family/model (which tell CPU generations apart
  where the hypervisor hides the model name), cores and the matmul-relevant instruction sets."""
  fields = {}
  try:
    with open(cpuinfo) as f:
      for line in f:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
  flags = set(fields.get("flags", "").split())
  return (f"{fields.get('vendor_id', '?')} {fields.get('model name', '?')} "
          f"(family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}), "
          f"{os.cpu_count()} cores, " + (" ".join(f for f in _MATMUL_FLAGS if f in flags)
                                         or "no AVX2"))


def wall_times(fn, repeats: int, warmup: int = 1) -> list[float]:
  """Wall time of each of `repeats` calls of `fn()`, after `warmup` untimed ones
  (compilation, caches)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
  """Median wall time of `fn()` after `warmup` untimed calls."""
  return statistics.median(wall_times(fn, repeats, warmup))


def interleaved_medians(fns: dict, repeats: int, warmup: int = 1, block: int = 1) -> dict:
  """Median wall time of each `fns[name]()`, timed in turns so that a shared machine whose
  speed drifts during the run slows all of them alike; `warmup` untimed calls of each come
  first. Each turn times `block` calls of one function; with `block` > 1 the `warmup` calls
  open every turn instead, so that what the previous turn's library leaves running (torch's
  OpenMP threads spin on for a moment after returning) is not charged to the next. The median
  is over all `repeats * block` timed calls."""
  if block == 1:
    for fn in fns.values():
      for _ in range(warmup):
        fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name] += wall_times(fn, block, warmup=warmup if block > 1 else 0)
  return {name: statistics.median(t) for name, t in times.items()}


def argument_parser(description: str, *options: str) -> argparse.ArgumentParser:
  """The options of every step benchmark (the checkpoint, the shapes, repeats, host memory)
  and the `OPTIONS` named in `options`."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--checkpoint", default=None, help="HF checkpoint (default: MiniLM-L6)")
  parser.add_argument("--architecture", choices=sorted(ARCHITECTURES),
                      help="instead of --checkpoint: this published size, random weights")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--host-memory", choices=host_memory.SETTINGS,
                      default=base_config().runtime.host_memory,
                      help="CPU: glibc malloc keeps freed memory (retain, the train loop's "
                           "default) or not (release); for the whole process, torch included")
  for name in options:
    parser.add_argument(name, **OPTIONS[name])
  return parser


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
  """`parser`'s options, with `--host-memory` applied: call it before importing jax, numpy or
  torch, which start threads (glibc fixes a thread's malloc arena when the thread first
  allocates)."""
  args = parser.parse_args()
  if args.architecture and args.checkpoint:
    parser.error("give --checkpoint or --architecture, not both")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")  # checkpoints are local or random
  args.host_memory_changed = host_memory.configure(args.host_memory)
  return args


def run(args: argparse.Namespace, benchmark) -> None:
  """Prints the host memory and CPU lines, then calls `benchmark(checkpoint)` on the checkpoint
  that --checkpoint or --architecture names (default: MiniLM-L6); all of it with Flax's dense
  layers where the script takes --flax-dense and it is given."""
  from optical_jax.data.assets import minilm_checkpoint_dir
  with flax_dense_layers() if getattr(args, "flax_dense", False) else contextlib.nullcontext():
    checkpoint = args.checkpoint or (random_checkpoint(args.architecture) if args.architecture
                                     else str(minilm_checkpoint_dir()))
    print(f"host memory: {args.host_memory}" + (
        " (glibc malloc keeps freed memory, for this whole process)" if args.host_memory_changed
        else " (malloc as it is)"))
    print(f"CPU: {cpu_description()}")
    benchmark(checkpoint)


def random_checkpoint(architecture: str) -> str:
  """A checkpoint directory of `ARCHITECTURES[architecture]` with random weights, written once
  into the cache directory (the step benchmark feeds random token ids: no tokenizer needed)."""
  import jax
  import jax.numpy as jnp
  from optical_jax.models.encoder import Encoder, EncoderConfig
  from optical_jax.models.hf_checkpoint import save_hf_checkpoint
  directory = CacheDir(base_config().runtime.cache_dir).benchmark_checkpoints / architecture
  if not (directory / "config.json").is_file():
    config = EncoderConfig.from_hf_dict(ARCHITECTURES[architecture], source=architecture)
    ids = jnp.ones((1, 2), jnp.int32)
    params = jax.jit(Encoder(config).init)(jax.random.PRNGKey(0), ids, ids)["params"]
    save_hf_checkpoint(directory, params, config, hf_config=ARCHITECTURES[architecture])
  return str(directory)


@contextlib.contextmanager
def flax_dense_layers():
  """Traces our encoder with Flax's `nn.Dense` / `nn.DenseGeneral` (the same parameters)
  instead of `optical_jax.models.encoder.Dense`: the backward pass before its custom VJP."""
  import flax.linen as nn
  from optical_jax.models import encoder
  ours = encoder.Dense

  def flax_dense(features, dtype, name):
    if isinstance(features, int):
      return nn.Dense(features, dtype=dtype, name=name)
    return nn.DenseGeneral(features, dtype=dtype, name=name)

  encoder.Dense = flax_dense
  try:
    yield
  finally:
    encoder.Dense = ours


def matmul_peak(dtype: str = "float32", n: int | None = None, repeats: int = 10) -> float:
  """FLOP/s of a large square matmul, its fastest of `repeats` runs: the machine's practical
  peak for this dtype (a median would move with the noise of a shared machine). Accelerators
  get a larger matmul, so that launching it is a small part of its time."""
  import jax
  import jax.numpy as jnp
  n = n or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  return 2 * n ** 3 / min(wall_times(lambda: f(a).block_until_ready(), repeats))


def device_peak(dtype: str) -> float:
  """The measured matmul peak for `dtype`, printed with the device (the step tables' header)."""
  import jax
  device = jax.devices()[0]
  peak = matmul_peak(dtype)
  print(f"device: {device.platform} {device.device_kind} x{jax.local_device_count()}, "
        f"measured matmul peak {peak / 1e9:.1f} GFLOP/s ({dtype})")
  return peak


def step_flops(config, batch: int, length: int) -> float:
  """Teacher forward (1x) + student forward and backward (3x) encoder FLOPs."""
  from optical_jax.models.encoder import encoder_flops_per_token
  return 4 * encoder_flops_per_token(config, length) * batch * length


def jax_reference(checkpoint: str, *, dtype: str = "float32", iterations: int = 50,
                  remat: bool = False, compiler_options: dict[str, str] | None = None,
                  attention: str = "xla", microbatch_size: int = 0):
  """Our distillation step `step(batch) -> loss` (the train loop's compiled data-parallel
  step) and the models. `batch` holds `[batch, length]` arrays (the global batch); with
  `teacher_tokens` in it, the teacher's forward is skipped (the cached path).
  `compiler_options` are XLA options for compiling the step (`--xla_*` flags without `--`);
  default: the train loop's."""
  import jax
  from optical_jax.models.student import build_models
  from optical_jax.runtime.mesh import data_mesh
  from optical_jax.training.step import global_batch
  from optical_jax.training.trainer import build_trainer
  config = base_config()
  m = config.model
  m.teacher, m.dtype, m.remat, m.dropout, m.attention = checkpoint, dtype, remat, 0.0, attention
  config.train.microbatch_size = microbatch_size
  config.loss, config.train.num_train_steps = "ot", 1000
  config.ot.max_iterations, config.ot.threshold = iterations, 0.0  # fixed iterations
  models = build_models(config)
  mesh = data_mesh()
  trainer = build_trainer(config, models, mesh, compiler_options=compiler_options)

  def step(batch_arrays):
    return jax.block_until_ready(trainer.apply(global_batch(batch_arrays, mesh))["loss"])

  def temporary_bytes(batch_arrays) -> int:
    """The compiled step's temporary buffers: mostly activations kept for the backward."""
    executable = trainer.executable_for(global_batch(batch_arrays, mesh))
    return executable.memory_analysis().temp_size_in_bytes

  step.temporary_bytes = temporary_bytes
  return step, models


def random_batch(batch: int, length: int) -> dict:
  """A full-length global batch `[batch, length]` of numpy arrays, which the step splits over
  the devices."""
  import jax
  import numpy as np
  devices = jax.local_device_count()
  if batch % devices:
    raise SystemExit(f"batch {batch} does not split evenly over {devices} devices")
  ids = np.random.default_rng(0).integers(1000, 20000, (batch, length)).astype(np.int32)
  return {"student_ids": ids, "student_mask": np.ones_like(ids),
          "teacher_ids": ids[:, ::-1].copy(), "teacher_mask": np.ones_like(ids)}


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
    without_dropout(module)
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


def without_dropout(model):
  """`model` (a torch module) with its dropout probabilities set to 0, as in ours."""
  import torch
  for m in model.modules():
    if isinstance(m, torch.nn.Dropout):
      m.p = 0.0
  return model


def torch_step(checkpoint: str, batch: int, length: int, *, iterations: int,
               dtype: str = "float32"):
  """The PyTorch reference step on `random_batch`'s token ids, as a no-argument call."""
  import torch
  step = torch_reference(checkpoint, iterations=iterations, dtype=dtype)
  arrays = {k: torch.from_numpy(v.reshape(-1, length)).long()
            for k, v in random_batch(batch, length).items()}
  return lambda: step(arrays["student_ids"], arrays["student_mask"], arrays["teacher_ids"],
                      arrays["teacher_mask"])
