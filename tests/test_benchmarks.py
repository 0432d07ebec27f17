"""The step benchmarks' scripts run end to end (on a tiny BERT, tiny shapes) and print their
tables: BENCHMARKS.md's numbers come from these commands, so a broken script must show here."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import cpu_description
from tests.helpers import save_tiny_bert

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"\d+(?:\.\d+)?"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
  # 256 positions: the scaling grid goes up to 256 tokens.
  return save_tiny_bert(tmp_path_factory.mktemp("benchmark") / "tiny_bert", seed=2,
                        max_position_embeddings=256)


def run_benchmark(checkpoint: Path, script: str, *arguments: str) -> str:
  result = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / script), "--checkpoint",
       str(checkpoint), "--batch", "4", "--length", "8", "--repeats", "2", *arguments],
      capture_output=True, text=True, timeout=600, env=benchmark_env())
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def benchmark_env() -> dict:
  """Offline, CPU, and the repository importable from benchmarks/ (the scripts' own folder
  comes first on their path)."""
  path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
  return dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", PYTHONPATH=path)


@pytest.mark.slow
@pytest.mark.parametrize("dtype, torch_row", [
    ("float32", "PyTorch reference (transformers, torch Sinkhorn)"),
    ("bfloat16", "PyTorch reference (transformers, torch Sinkhorn, bfloat16 autocast)"),
])
def test_step_table_compares_ours_with_pytorch_in_the_same_dtype(tiny_checkpoint, dtype,
                                                                   torch_row):
  out = run_benchmark(tiny_checkpoint, "step.py", "--dtype", dtype)
  assert f"dtype={dtype}" in out
  assert re.search(r"^CPU: .+, \d+ cores, ", out, re.M), out  # the table names its machine
  for row in ("optical_jax (JAX/Flax, ott-jax)", torch_row):
    assert re.search(rf"\| {re.escape(row)} \| {NUMBER} \| {NUMBER} \| {NUMBER} \| {NUMBER}% \|",
                     out), out
  assert re.search(rf"ours is {NUMBER}x the speed of the PyTorch reference", out), out


@pytest.mark.slow
def test_step_table_times_the_microbatched_step_in_the_same_turns(tiny_checkpoint):
  out = run_benchmark(tiny_checkpoint, "step.py", "--microbatch-size", "2")
  for row in ("optical_jax (JAX/Flax, ott-jax)", "optical_jax, microbatches of 2",
              "PyTorch reference (transformers, torch Sinkhorn)"):
    assert re.search(rf"\| {re.escape(row)} \| {NUMBER} \| {NUMBER} \| {NUMBER} \| {NUMBER}% \|",
                     out), out
  assert re.search(rf"ours with microbatches of 2 is {NUMBER}x the speed of the PyTorch "
                   "reference", out), out


@pytest.mark.slow
def test_kernels_table_times_each_encoder_kernel_in_both_dtypes(tiny_checkpoint):
  out = run_benchmark(tiny_checkpoint, "encoder_kernels.py")
  rows = re.findall(rf"^\| (.+) \| (float32|bfloat16) \| ({NUMBER}) \| ({NUMBER}) \| "
                    rf"({NUMBER})x \|$", out, re.M)
  assert len(rows) == 12, out  # five matmuls and the attention, in two dtypes each
  # The tiny BERT's shapes: 32 tokens (4 x 8), hidden 32, intermediate 128, 4 heads of 8.
  assert "feed-forward in: tokens x hidden x intermediate (32 x 32 x 128)" in out
  assert "(8 x 8 x 8, 16 of them)" in out
  assert "one layer's attention, forward + backward (4 heads of 8)" in out
  assert all(float(ratio) > 0 for *_, ratio in rows)  # both timed (GFLOP/s may round to 0)


@pytest.mark.slow
def test_breakdown_times_our_encoder_with_both_dense_layers_and_torchs(tiny_checkpoint):
  out = run_benchmark(tiny_checkpoint, "breakdown.py")  # swaps in Flax's dense layers
  for row in ("JAX encoder forward", "JAX encoder forward + backward",
              "JAX forward + backward, Flax's nn.Dense layers",
              "JAX forward + backward, word embeddings frozen", "PyTorch encoder forward",
              "PyTorch encoder forward + backward"):
    assert re.search(rf"^\| {re.escape(row)} \| {NUMBER} \|$", out, re.M), out


def test_cpu_description_tells_cpu_generations_apart_by_family_and_instruction_sets(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  processor = ("processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n"
               "model\t\t: 2\nmodel name\t: AMD EPYC\n"
               "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512bw\n\n")
  cpuinfo.write_text(processor.format(n=0) + processor.format(n=1))
  description = cpu_description(str(cpuinfo))
  assert description.startswith("AuthenticAMD AMD EPYC (family 26, model 2), ")
  assert description.endswith(" cores, avx2 avx512f avx512_bf16")
  cpuinfo.write_text("vendor_id\t: GenuineIntel\nflags\t\t: fpu sse2\n")
  assert cpu_description(str(cpuinfo)).endswith("no AVX2")


@pytest.mark.slow
def test_grid_times_ours_and_pytorch_at_each_batch_length_and_iteration_count(tmp_path):
  # One layer (each point compiles a step) and a small grid around B=4, L=8, 2 iterations, one
  # timed turn (the defaults: around B=32, L=64, 50 iterations).
  checkpoint = save_tiny_bert(tmp_path / "one_layer", seed=2, layers=1)
  plot = tmp_path / "scaling.png"
  out = run_benchmark(checkpoint, "grid.py", "--plot", str(plot), "--iterations", "2",
                      "--batches", "4,8", "--lengths", "8,16", "--sinkhorn", "2,5",
                      "--repeats", "1")
  rows = re.findall(rf"^\| (\d+) \| (\d+) \| (\d+) \| {NUMBER} \| {NUMBER} \| {NUMBER} \| "
                    rf"{NUMBER}% \| {NUMBER} \| ({NUMBER})x \|$", out, re.M)
  points = {(int(b), int(l), int(i)) for b, l, i, _ in rows}
  assert len(rows) == len(points) == 4, out  # B=4, L=8, 2 iterations is shared by all three
  assert {(8, 8, 2), (4, 16, 2), (4, 8, 5)} <= points
  assert all(float(ratio) > 0 for *_, ratio in rows)
  assert plot.stat().st_size > 10_000  # three panels drawn


@pytest.mark.slow
def test_devices_table_times_the_step_on_each_device_count(tiny_checkpoint):
  result = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "devices.py"), "--checkpoint",
       str(tiny_checkpoint), "--batch", "4", "--length", "8", "--repeats", "2", "--devices",
       "1,2"], capture_output=True, text=True, timeout=600, env=benchmark_env())
  assert result.returncode == 0, result.stderr[-3000:]
  rows = re.findall(rf"^\| (\d) \| (\d) \| ({NUMBER}) \| ({NUMBER})x \|$", result.stdout, re.M)
  assert [(n, b) for n, b, _, _ in rows] == [("1", "4"), ("2", "2")]
  assert float(rows[0][3]) == 1.0 and all(float(s) > 0 for _, _, s, _ in rows)


@pytest.mark.slow
def test_encoding_table_compares_our_text_encoder_with_sentence_transformers(tiny_checkpoint,
                                                                            tmp_path):
  corpus = tmp_path / "corpus.tsv"
  corpus.write_text("".join(f"d{i}\tIn the beginning God created {'the earth ' * i}\n"
                            for i in range(12)))
  result = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "encoding.py"), "--checkpoint",
       str(tiny_checkpoint), "--passages-file", str(corpus), "--passages", "10", "--batch", "4",
       "--length", "32", "--repeats", "1"], capture_output=True, text=True, timeout=600,
      env=benchmark_env())
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert re.search(r"^CPU: .+, \d+ cores, ", out, re.M), out
  assert re.search(r"^10 passages, .* batch 4, .*largest difference between the embeddings "
                   r"\d\.\de[-+]\d\d$", out, re.M), out
  for row in ("optical_jax TextEncoder (JAX/Flax)", "sentence-transformers (PyTorch)"):
    assert re.search(rf"^\| {re.escape(row)} \| {NUMBER} \| {NUMBER} \| {NUMBER} \|$", out,
                     re.M), out
  assert re.search(rf"ours is {NUMBER}x the speed of sentence-transformers", out), out


@pytest.mark.slow
def test_accelerator_table_gives_flops_the_compute_bound_and_the_device_wait():
  env = dict(benchmark_env(), XLA_FLAGS="--xla_force_host_platform_device_count=2")
  result = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "accelerator.py"), "--architecture", "tiny",
       "--batch", "8", "--length", "16", "--repeats", "2", "--steps", "3", "--pairs", "64",
       "--encode-batch", "4", "--measure"], capture_output=True, text=True, timeout=600,
      env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert re.search(r"^CPU: .+, \d+ cores", out, re.M), out
  for row in ("without the teacher token cache", "with a warm teacher token cache"):
    assert re.search(rf"\| {row}[^|]* \| {NUMBER} \| {NUMBER} \| {NUMBER} \|", out), out
  flops = re.search(rf"cost analysis of the compiled step: ({NUMBER}(?:e-\d+)?) TFLOP per step",
                    out)
  assert flops and float(flops.group(1)) > 0, out
  assert re.search(rf"\| H100 SXM \| 989 \| {NUMBER} \| {NUMBER} \| {NUMBER} \|", out), out
  for devices in (1, 2):  # the measured rows, per device count
    assert re.search(rf"^\| {devices} \| {NUMBER} \| {NUMBER} \| \d+% \| [\d,]+ \| n/a \|$", out,
                     re.M), out
  assert re.search(r"[\d,]+ passages/s", out), out
  # The compiled step's memory per device: arguments, outputs, temporaries, peak, what fits.
  gigabytes = r" \| ".join([NUMBER] * 4)
  assert re.search(rf"^\| 1 \| {gigabytes} \| TPU v5e-1 \(16 GB\)", out, re.M), out
