"""Loss + gradient time of the OT distillation loss: ours vs what people would write instead.

  python benchmarks/losses.py            # full grid (a few minutes on 2 CPU cores)
  python benchmarks/losses.py --quick    # B=32, L=64, d=384 only

References, all computing the same loss <P, C> with a detached plan and its gradient:
  (a) POT: a per-pair Python loop of `ot.sinkhorn` on torch tensors (torch autograd), what a
      PyTorch user would write; needs `pip install pot torch`.
  (b) a plain fixed-iteration log-domain Sinkhorn in jax.numpy, vmapped and jitted.
Ours runs ott-jax's Sinkhorn to the same tolerance. Times are medians after compilation.
"""

from __future__ import annotations

import argparse
import jax
import jax.numpy as jnp
import numpy as np

from optical_jax.losses import ot_distillation_loss, token_cost_matrix
from common import median_seconds

EPSILON, ITERATIONS = 0.05, 50


def plain_jax_loss(student, teacher, student_mask, teacher_mask):
  costs = token_cost_matrix(student, teacher)
  log_a = jnp.log(student_mask / student_mask.sum(1, keepdims=True))
  log_b = jnp.log(teacher_mask / teacher_mask.sum(1, keepdims=True))

  def solve(cost, log_a, log_b):
    def step(carry, _):
      f, g = carry
      f = -EPSILON * jax.nn.logsumexp(log_b[None] + (g[None] - cost) / EPSILON, axis=1)
      g = -EPSILON * jax.nn.logsumexp(log_a[:, None] + (f[:, None] - cost) / EPSILON, axis=0)
      return (f, g), None
    (f, g), _ = jax.lax.scan(step, (jnp.zeros_like(log_a), jnp.zeros_like(log_b)), None,
                             length=ITERATIONS)
    return jnp.exp(log_a[:, None] + log_b[None] + (f[:, None] + g[None] - cost) / EPSILON)

  plan = jax.lax.stop_gradient(jax.vmap(solve)(jax.lax.stop_gradient(costs), log_a, log_b))
  return jnp.sum(plan * costs, axis=(1, 2))


def pot_loop(student, teacher):
  import ot
  import torch
  student = torch.tensor(student, requires_grad=True)
  teacher = torch.tensor(teacher)
  total = 0.0
  for s, t in zip(student, teacher):
    cost = 1 - torch.nn.functional.normalize(s, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T
    a = torch.full((s.shape[0],), 1 / s.shape[0], dtype=s.dtype)
    b = torch.full((t.shape[0],), 1 / t.shape[0], dtype=t.dtype)
    plan = ot.sinkhorn(a, b, cost.detach(), EPSILON, method="sinkhorn_log",
                       numItermax=ITERATIONS, stopThr=1e-3)
    total = total + (plan * cost).sum()
  total.backward()
  return student.grad


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  grid = [(32, 64, 384)] if args.quick else [
      (b, l, d) for b in (32, 128) for l in (32, 64, 128) for d in (384, 768)]
  try:
    import ot, torch  # noqa: F401
    have_pot = True
  except ImportError:
    have_pot = False
  ours = jax.jit(jax.grad(lambda s, t, sm, tm: ot_distillation_loss(
      s, t, sm, tm, epsilon=EPSILON, max_iterations=ITERATIONS, threshold=1e-3).sum()))
  plain = jax.jit(jax.grad(lambda s, t, sm, tm: plain_jax_loss(s, t, sm, tm).sum()))
  print(f"device: {jax.devices()[0].device_kind}, epsilon={EPSILON}, at most {ITERATIONS} "
        "Sinkhorn iterations, loss + gradient w.r.t. the student tokens")
  print("| B | L | d | ours (ms) | plain jnp (ms) | POT loop (ms) | ours vs jnp | ours vs POT |")
  print("|---|---|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for batch, length, dim in grid:
    # Teacher tokens are noisy, shuffled copies of the student's, so the plans have the
    # structure of real aligned bitext (random vectors would converge in a few iterations).
    s = rng.normal(size=(batch, length, dim)).astype(np.float32)
    t = s[:, rng.permutation(length)] + 0.7 * rng.normal(size=(batch, length, dim))
    t = t.astype(np.float32)
    mask = np.ones((batch, length), np.float32)
    args_ = [jnp.asarray(x) for x in (s, t, mask, mask)]
    t_ours = median_seconds(lambda: ours(*args_).block_until_ready(), args.repeats)
    t_plain = median_seconds(lambda: plain(*args_).block_until_ready(), args.repeats)
    t_pot = median_seconds(lambda: pot_loop(s, t), max(1, args.repeats // 2)) if have_pot else None
    pot_cell = f"{t_pot * 1e3:.1f}" if t_pot else "n/a"
    ratio_pot = f"{t_pot / t_ours:.1f}x faster" if t_pot else "n/a"
    print(f"| {batch} | {length} | {dim} | {t_ours * 1e3:.1f} | {t_plain * 1e3:.1f} | {pot_cell} "
          f"| {t_ours / t_plain:.2f}x the time | {ratio_pot} |", flush=True)


if __name__ == "__main__":
  main()
