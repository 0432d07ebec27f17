"""Pooling of token embeddings into sentence embeddings.

Kept free of model code so that losses and evaluation can share it without
importing the encoder or transformers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _check_tokens_and_mask(tokens: jax.Array, mask: jax.Array) -> None:
  if tokens.ndim != 3:
    raise ValueError(f"tokens must be [batch, length, dim], got shape {tokens.shape}")
  if mask.shape != tokens.shape[:2]:
    raise ValueError(
        f"mask must be [batch, length] = {tokens.shape[:2]}, got shape {mask.shape}")


def l2_normalize(x: jax.Array, *, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """Scales `x` to unit L2 norm along `axis`: `x / max(||x||, eps)`, so zero vectors stay zero.

  The gradient is finite everywhere, zero vectors (padding) included.

  >>> import jax, jax.numpy as jnp
  >>> l2_normalize(jnp.array([[3., 4.], [0., 0.]]))
  Array([[0.6, 0.8],
         [0. , 0. ]], dtype=float32)
  >>> bool(jnp.all(jnp.isfinite(jax.grad(lambda x: l2_normalize(x).sum())(jnp.zeros(2)))))
  True
  """
  x = jnp.asarray(x)
  squared = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axis, keepdims=True)
  # Double where: sqrt's derivative at 0 is inf, and inf * 0 is a NaN in the backward pass
  # even where the branch is not selected, so sqrt never sees a norm below eps.
  large = squared > eps * eps
  norm = jnp.where(large, jnp.sqrt(jnp.where(large, squared, 1.0)), eps)
  return x / norm.astype(x.dtype)


def mean_pool(tokens: jax.Array, mask: jax.Array, *, normalize: bool = False) -> jax.Array:
  """Average of the unmasked token embeddings (sentence-transformers' mean pooling).

  Args:
    tokens: `[batch, length, dim]` token embeddings.
    mask: `[batch, length]`, true (or 1) for real tokens.
    normalize: L2-normalise the result.

  Returns:
    `[batch, dim]` float32 sentence embeddings; an all-masked row gives zeros. Masked
    positions are never read, so NaN or inf there changes nothing.

  >>> import jax.numpy as jnp
  >>> mean_pool(jnp.array([[[1., 2.], [3., 4.], [9., 9.]]]), jnp.array([[1, 1, 0]]))
  Array([[2., 3.]], dtype=float32)
  """
  tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
  _check_tokens_and_mask(tokens, mask)
  weights = mask.astype(jnp.float32)[..., None]
  # where, not only a product with the mask: NaN * 0 is NaN.
  summed = jnp.sum(jnp.where(weights > 0, tokens.astype(jnp.float32) * weights, 0.0), axis=1)
  pooled = summed / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
  return l2_normalize(pooled) if normalize else pooled


def cls_pool(tokens: jax.Array, mask: jax.Array | None = None, *,
             normalize: bool = False) -> jax.Array:
  """The first token's embedding ([CLS] / <s>), `[batch, dim]` float32.

  With a `mask`, a row whose first token is masked (an all-padding row) gives zeros, as in
  `mean_pool`.
  """
  tokens = jnp.asarray(tokens)
  if mask is not None:
    mask = jnp.asarray(mask)
    _check_tokens_and_mask(tokens, mask)
  elif tokens.ndim != 3:
    raise ValueError(f"tokens must be [batch, length, dim], got shape {tokens.shape}")
  pooled = tokens[:, 0].astype(jnp.float32)
  if mask is not None:
    pooled = jnp.where(mask[:, :1].astype(bool), pooled, 0.0)
  return l2_normalize(pooled) if normalize else pooled


POOLERS = {"mean": mean_pool, "cls": cls_pool}


def pool(tokens: jax.Array, mask: jax.Array, *, method: str = "mean",
         normalize: bool = False) -> jax.Array:
  """Pools with the method named `method` (`"mean"` or `"cls"`)."""
  if method not in POOLERS:
    raise ValueError(f"pooling method must be one of {sorted(POOLERS)}, got {method!r}")
  return POOLERS[method](tokens, mask, normalize=normalize)
