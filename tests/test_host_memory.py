"""optical_jax.runtime.host_memory: freed memory is reused instead of page-faulted in again."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from optical_jax.runtime import host_memory

# Allocates, touches and frees a 96 MiB block a few times from a worker thread (as XLA's
# threads do), after `host_memory.configure(argv[1])`; prints MiB page-faulted per block.
# malloc and free straight from C, as XLA:CPU allocates its buffers.
_PROBE = """
import ctypes, resource, sys, threading
from optical_jax.runtime import host_memory
changed = host_memory.configure(sys.argv[1])
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
size = 96 * 2**20

faulted = []
def allocate_and_free():
  for i in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(ctypes.c_size_t(size))
    ctypes.memset(block, 1, size)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    libc.free(ctypes.c_void_p(block))
    if i:  # the first one may grow the heap
      faulted.append((after - before) * resource.getpagesize() / 2**20)
worker = threading.Thread(target=allocate_and_free)
worker.start(); worker.join()
print(changed, max(faulted))
"""


def _faulted_mib(setting: str) -> tuple[bool, float]:
  out = subprocess.run([sys.executable, "-c", _PROBE, setting], capture_output=True, text=True,
                       check=True).stdout.split()
  return out[0] == "True", float(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_retain_reuses_freed_memory_where_release_faults_it_in_again():
  retained, retained_mib = _faulted_mib("retain")
  released, released_mib = _faulted_mib("release")
  assert (retained, released) == (True, False)
  assert released_mib > 90  # a fresh mmap per block: every page faulted in again
  assert retained_mib < 5


def test_unknown_setting_is_named():
  with pytest.raises(ValueError, match="host memory setting must be one of .*'keep'"):
    host_memory.configure("keep")


# Runs a command-line script with `host_memory.configure` replaced by a probe that prints the
# setting it got, whether the train loop was imported yet and whether JAX had started its
# backend (and with it XLA's threads), then stops the script.
_CLI_PROBE = """
import runpy, sys
from jax._src import xla_bridge
from optical_jax.runtime import host_memory

def probe(setting):
  print(setting, "optical_jax.training.loop" in sys.modules, xla_bridge.backends_are_initialized())
  raise SystemExit(0)

host_memory.configure = probe
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("script, arguments", [
    ("train.py", ["--workdir", "unused"]),
    ("eval.py", ["--checkpoint", "unused"]),
])
def test_command_lines_apply_the_config_before_jax_starts(script, arguments):
  root = Path(__file__).resolve().parents[1]
  result = subprocess.run(
      [sys.executable, "-c", _CLI_PROBE, str(root / script), "--config",
       str(root / "configs" / "tiny.py"), "--config.runtime.host_memory=release", *arguments],
      capture_output=True, text=True, cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"})
  assert result.returncode == 0, result.stderr
  # The setting from the config, before the train loop (and its JAX computations) loaded.
  assert result.stdout.split() == ["release", "False", "False"]
