"""Throughput against the physical limit: tokens/s and examples/s of a window of steps, and
the model FLOPs utilisation (MFU): the FLOPs of each step, from XLA's cost analysis of the
compiled step, over the device's nominal peak.

Peaks are dense (no sparsity) TFLOP/s per JAX device, by compute dtype. On TPU v2 and v3 JAX
sees each TensorCore as a device (half a chip); from v4 on, a chip. JAX's default matmul
precision computes float32 matmuls in one bfloat16 pass on TPU and in TF32 on NVIDIA GPUs
from Ampere on, so those are the float32 peaks there. The T4 has no bfloat16 units: its
"bfloat16" entry is the float16 peak, an upper bound XLA does not reach. Unknown devices (and
CPUs) have no peak: tokens/s only.
"""

from __future__ import annotations

import re
import time
from typing import Mapping, Sequence

# (name, device kind pattern, bfloat16 peak, float32 peak), the first match wins.
PEAK_TFLOPS: Sequence[tuple[str, str, float, float]] = (
    ("TPU v6e", r"tpu v6( lite|e)", 918.0, 918.0),
    ("TPU v5e", r"tpu v5( lite|e)", 197.0, 197.0),
    ("TPU v5p", r"tpu v5p?\b", 459.0, 459.0),
    ("TPU v4", r"tpu v4", 275.0, 275.0),
    ("TPU v3 (a core)", r"tpu v3", 61.5, 61.5),
    ("TPU v2 (a core)", r"tpu v2", 22.5, 22.5),
    ("H200", r"h200", 989.0, 494.0),
    ("H100 PCIe", r"h100.*pcie", 756.0, 378.0),
    ("H100 SXM", r"h100", 989.0, 494.0),
    ("A100", r"a100", 312.0, 156.0),
    ("L4", r"\bl4\b", 121.0, 60.0),
    ("T4", r"\bt4\b", 65.0, 8.1),
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Nominal peak FLOP/s of one device of `device_kind` (`jax.Device.device_kind`) computing
  in `dtype` ("bfloat16" or "float32"), or None for a device not in `PEAK_TFLOPS`."""
  kind = device_kind.lower()
  for _, pattern, bf16, fp32 in PEAK_TFLOPS:
    if re.search(pattern, kind):
      return (bf16 if dtype == "bfloat16" else fp32) * 1e12
  return None


def executable_flops(executable) -> float | None:
  """FLOPs of one run of a compiled XLA executable on one device (its cost analysis; a
  `shard_map` step reports one device's share), or None where XLA gives none."""
  try:
    analysis = executable.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


class Meter:
  """Counts a window of steps (their tokens, examples and FLOPs per device) and turns it into
  rates at the window's end; no device reads (the counts come from host batch masks)."""

  def __init__(self, *, peak: float | None):
    self.peak = peak
    self.reset()

  def reset(self) -> None:
    self.start, self.steps, self.tokens, self.examples = time.perf_counter(), 0, 0, 0
    self.flops: float | None = 0.0

  def add(self, *, tokens: int, examples: int, flops: float | None) -> None:
    self.steps += 1
    self.tokens += tokens
    self.examples += examples
    self.flops = None if flops is None or self.flops is None else self.flops + flops

  def rates(self) -> Mapping[str, float]:
    """`steps_per_sec`, `tokens_per_sec`, `examples_per_sec`, and `mfu` where the peak and
    the FLOPs are known, since `reset`; then resets."""
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    out = {"steps_per_sec": self.steps / elapsed, "tokens_per_sec": self.tokens / elapsed,
           "examples_per_sec": self.examples / elapsed}
    if self.flops and self.steps:
      out["step_tflops_per_device"] = self.flops / self.steps / 1e12
      if self.peak:
        out["mfu"] = self.flops / elapsed / self.peak
    self.reset()
    return out
