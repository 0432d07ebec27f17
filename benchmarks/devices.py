"""The data-parallel step on 1, 2 and 4 devices at a fixed global batch, in one run.

  python benchmarks/devices.py                       # fake CPU devices, MiniLM, B=32, L=64
  python benchmarks/devices.py --devices 1,2,4,8 --batch 64

Each device count runs `benchmarks/step.py --no-torch` in its own process (the device
count is fixed when JAX starts: `XLA_FLAGS=--xla_force_host_platform_device_count=N` on CPU);
on CPU, fake devices share the machine's cores, so the table shows the cost of splitting the
batch and of the gradient all-reduce, not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from common import cpu_description

HERE = Path(__file__).resolve().parent
OURS = re.compile(r"^\| optical_jax \(JAX/Flax, ott-jax\) \| ([\d.]+) \|", re.M)


def step_seconds(devices: int, arguments: list[str]) -> float:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.setdefault("HF_HUB_OFFLINE", "1")
  out = subprocess.run([sys.executable, str(HERE / "step.py"), "--no-torch", *arguments],
                       env=env, capture_output=True, text=True)
  if out.returncode:
    raise SystemExit(f"{devices} device(s): step.py failed:\n{out.stderr[-2000:]}")
  return float(OURS.search(out.stdout).group(1))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", default="1,2,4", help="device counts, comma-separated")
  parser.add_argument("--batch", type=int, default=32, help="global batch")
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--checkpoint", default=None, help="HF checkpoint (default: MiniLM-L6)")
  args = parser.parse_args()
  counts = [int(n) for n in args.devices.split(",")]
  common = ["--batch", str(args.batch), "--length", str(args.length), "--repeats",
            str(args.repeats), *(["--checkpoint", args.checkpoint] if args.checkpoint else [])]
  print(f"CPU: {cpu_description()}")
  print(f"global batch {args.batch}, length {args.length}; median of {args.repeats} steps")
  print("| devices | per-device batch | step (s) | vs 1 device |")
  print("|---|---|---|---|")
  first = None
  for n in counts:
    seconds = step_seconds(n, common)
    first = first or seconds
    print(f"| {n} | {args.batch // n} | {seconds:.3f} | {first / seconds:.2f}x |", flush=True)


if __name__ == "__main__":
  main()
