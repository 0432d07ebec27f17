"""A Flax encoder for the BERT family (BERT, MiniLM, e5, XLM-RoBERTa).

transformers v5 ships no Flax models, so this is our own implementation. Module and
parameter names mirror Hugging Face's so that `optical_jax.models.hf_checkpoint` maps weights
one to one, and parity with transformers' PyTorch model is tested to 1e-4.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from optical_jax.config import ATTENTION

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}

SUPPORTED_MODEL_TYPES = ("bert", "xlm-roberta", "roberta", "camembert")


def check_attention(attention: str, dtype: Any, platform: str | None = None) -> None:
  """Raises ValueError unless `attention` is one of `optical_jax.config.ATTENTION` (the
  `jax.nn.dot_product_attention` implementations) and can run: "cudnn" needs a half-precision
  dtype and, where `platform` (of the devices that run it: "cpu", "gpu", "tpu") is given, a
  GPU. The platform is the devices' and not `jax.default_backend()`: a program lowered on one
  host for another's devices (`jax.export`) is checked for those."""
  if attention not in ATTENTION:
    raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
  dtype = jnp.dtype(dtype)
  if attention == "cudnn" and (platform not in (None, "gpu")
                               or dtype not in (jnp.bfloat16, jnp.float16)):
    raise ValueError(f"attention 'cudnn' needs an NVIDIA GPU and a bfloat16 or float16 dtype; "
                     f"here the devices are {platform!r} and the dtype {dtype.name!r} "
                     "(use 'xla')")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Architecture of a BERT-family encoder (the fields of an HF `config.json` we use)."""

  vocab_size: int
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  pad_token_id: int = 0
  # RoBERTa-style models number positions from pad_token_id + 1 and skip padding.
  roberta_positions: bool = False
  model_type: str = "bert"

  @property
  def max_length(self) -> int:
    """The longest input the position embeddings cover: RoBERTa-style numbering spends the
    first pad_token_id + 1 rows (XLM-R's 514 positions hold 512 tokens)."""
    if self.roberta_positions:
      return self.max_position_embeddings - self.pad_token_id - 1
    return self.max_position_embeddings

  @classmethod
  def from_hf_dict(cls, hf: Mapping[str, Any], *, source: str = "config.json") -> "EncoderConfig":
    """Builds the config from a Hugging Face `config.json` dict; `source` names it in errors."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
          f"{source}: model_type {model_type!r} is not a supported BERT-family architecture "
          f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"{source}: position_embedding_type "
                       f"{hf['position_embedding_type']!r} is not supported (only 'absolute')")
    act = hf.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
      raise ValueError(f"{source}: hidden_act {act!r} is not supported "
                       f"(supported: {', '.join(sorted(_ACTIVATIONS))})")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                           "num_attention_heads", "intermediate_size") if k not in hf]
    if missing:
      raise ValueError(f"{source}: missing field(s) {', '.join(missing)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in hf.items() if k in fields}
    kwargs["pad_token_id"] = hf.get("pad_token_id") if hf.get("pad_token_id") is not None else (
        1 if model_type != "bert" else 0)
    kwargs["roberta_positions"] = model_type != "bert"
    if kwargs["hidden_size"] % kwargs["num_attention_heads"]:
      raise ValueError(f"{source}: hidden_size {kwargs['hidden_size']} is not divisible by "
                       f"num_attention_heads {kwargs['num_attention_heads']}")
    return cls(**kwargs)

  def to_hf_dict(self, *, architecture_only: bool = False) -> dict[str, Any]:
    """The Hugging Face `config.json` fields of this config (`from_hf_dict`'s inverse);
    `architecture_only`: just those that fix the parameter shapes and the computation."""
    hf = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
          if f.name != "roberta_positions"}
    if architecture_only:
      for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        del hf[name]
    return hf


def position_ids_for(input_ids: jax.Array, attention_mask: jax.Array,
                     config: EncoderConfig) -> jax.Array:
  """Position ids as transformers computes them for this architecture."""
  length = input_ids.shape[-1]
  if config.roberta_positions:
    # transformers' create_position_ids_from_input_ids: count real tokens, offset by pad.
    not_pad = (input_ids != config.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=-1) * not_pad + config.pad_token_id
  return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), input_ids.shape)


def _kernel_gradient(x: jax.Array, g: jax.Array) -> jax.Array:
  """`x.T @ g`, the weight gradient of `x @ kernel` (both `[tokens, features]`)."""

  def via_transposed_copy(x, g):
    # XLA:CPU hands a dot contracting axis 0 of both operands to Eigen, not YNNPACK, and
    # runs it beside the input-gradient dot; the two share the cores badly (MiniLM's forward
    # + backward is about 8% slower: `benchmarks/breakdown.py`). The barrier keeps
    # the explicit transpose from being folded back into the dot, so the dot is a plain
    # [in, tokens] x [tokens, out] one.
    return jax.lax.optimization_barrier(x.T) @ g

  return jax.lax.platform_dependent(x, g, cpu=via_transposed_copy, default=lambda x, g: x.T @ g)


@jax.custom_vjp
def _matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return x @ kernel


def _matmul_forward(x, kernel):
  return x @ kernel, (x, kernel)


def _matmul_backward(residuals, g):
  x, kernel = residuals
  return g @ kernel.T, _kernel_gradient(x, g)


_matmul.defvjp(_matmul_forward, _matmul_backward)


class Dense(nn.Module):
  """`x @ kernel + bias` on `[..., in]` inputs, with outputs `[..., *features]`.

  The same parameters as `nn.Dense` (int `features`) and `nn.DenseGeneral` (tuple), with a
  backward pass that XLA:CPU runs entirely through YNNPACK (see `_kernel_gradient`).
  """

  features: int | Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    flat_shape = (x.shape[-1], math.prod(features))
    init = nn.initializers.lecun_normal()
    kernel = self.param("kernel", lambda key, shape: init(key, flat_shape).reshape(shape),
                        (x.shape[-1], *features))
    bias = self.param("bias", nn.initializers.zeros_init(), features)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    # The encoder passes [batch * length, in] already (see `Layer`); 2-D keeps one contraction.
    y = _matmul(x.reshape(-1, flat_shape[0]), kernel.reshape(flat_shape)) + bias.reshape(-1)
    return y.reshape(*x.shape[:-1], *features)


class Embeddings(nn.Module):
  config: EncoderConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool):
    cfg = self.config
    embed = lambda n, name: nn.Embed(n, cfg.hidden_size, dtype=self.dtype, name=name)
    x = embed(cfg.vocab_size, "word_embeddings")(input_ids)
    x = x + embed(cfg.max_position_embeddings, "position_embeddings")(position_ids)
    x = x + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(x)
    return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class SelfAttention(nn.Module):
  config: EncoderConfig
  dtype: Any = jnp.float32
  attention: str = "xla"  # one of config.ATTENTION

  @nn.compact
  def __call__(self, x, attention_mask, deterministic: bool):
    """`x` is `[batch * length, hidden]` (see `Layer`); so is the result."""
    cfg = self.config
    batch, length = attention_mask.shape
    heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    proj = lambda name: Dense((heads, head_dim), self.dtype, name=name)(x).reshape(
        batch, length, heads, head_dim)
    q, k, v = proj("query"), proj("key"), proj("value")
    key_mask = attention_mask.astype(bool)[:, None, None, :]  # [batch, 1, 1, length]
    use_dropout = not deterministic and cfg.attention_probs_dropout_prob > 0
    if use_dropout:
      # jax.nn.dot_product_attention has no dropout; fall back to the explicit form.
      scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
      scores = jnp.where(key_mask, scores, jnp.finfo(scores.dtype).min)
      probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
      probs = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=False)
      context = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    else:
      mask = key_mask
      if self.attention == "cudnn":
        # cuDNN takes the mask as a bias with a row per query.
        mask = jnp.broadcast_to(key_mask, (batch, 1, length, length))
      context = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.attention)
    return context.reshape(batch * length, cfg.hidden_size)


class Layer(nn.Module):
  """One transformer layer on `[batch, length, hidden]`.

  Inside, activations are `[batch * length, hidden]` matrices: XLA:CPU's backward of a dense
  layer applied to a 3-D input (weight gradient contracting batch and length together) is
  ~25% slower per layer than the same matmuls on 2-D operands.
  """

  config: EncoderConfig
  dtype: Any = jnp.float32
  attention: str = "xla"

  @nn.compact
  def __call__(self, x, attention_mask, deterministic: bool):
    cfg = self.config
    dense = lambda features, name: Dense(features, self.dtype, name=name)
    norm = lambda name: nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name=name)
    dropout = nn.Dropout(cfg.hidden_dropout_prob)
    shape = x.shape
    x = x.reshape(-1, shape[-1])

    context = SelfAttention(cfg, self.dtype, self.attention, name="attention_self")(
        x, attention_mask, deterministic)
    attended = dense(cfg.hidden_size, "attention_output_dense")(context)
    x = norm("attention_output_LayerNorm")(x + dropout(attended, deterministic=deterministic))
    hidden = _ACTIVATIONS[cfg.hidden_act](dense(cfg.intermediate_size, "intermediate_dense")(x))
    out = dense(cfg.hidden_size, "output_dense")(hidden)
    return norm("output_LayerNorm")(x + dropout(out, deterministic=deterministic)).reshape(shape)


class Encoder(nn.Module):
  """BERT-family encoder returning the last hidden states `[batch, length, hidden]`.

  Attributes:
    config: the architecture.
    dtype: compute dtype (`jnp.bfloat16` runs matmuls in bf16; parameters stay float32).
    remat: recompute each layer's activations in the backward pass (gradient
      checkpointing), trading compute for memory on long sequences.
    attention: the `jax.nn.dot_product_attention` implementation, one of
      `optical_jax.config.ATTENTION`: "xla" (any backend) or "cudnn" (NVIDIA GPUs, with a
      float16 or bfloat16 `dtype`). Attention with dropout (training with
      `attention_probs_dropout_prob > 0`) is computed explicitly either way.
  """

  config: EncoderConfig
  dtype: Any = jnp.float32
  remat: bool = False
  attention: str = "xla"

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: jax.Array | None = None, *,
               deterministic: bool = True) -> jax.Array:
    cfg = self.config
    # The devices' platform is unknown while tracing: `validate` checks it for a run.
    check_attention(self.attention, self.dtype)
    if input_ids.shape[-1] > cfg.max_length:
      # An out-of-range position id would silently reuse the last position's embedding.
      raise ValueError(f"inputs of {input_ids.shape[-1]} tokens are longer than the "
                       f"{cfg.max_length} positions this encoder has embeddings for "
                       f"(max_position_embeddings {cfg.max_position_embeddings}); truncate "
                       "them to at most that")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    position_ids = position_ids_for(input_ids, attention_mask, cfg)
    x = Embeddings(cfg, self.dtype, name="embeddings")(input_ids, token_type_ids, position_ids,
                                                        deterministic)
    layer_cls = nn.remat(Layer, static_argnums=(3,)) if self.remat else Layer
    for i in range(cfg.num_hidden_layers):
      x = layer_cls(cfg, self.dtype, self.attention, name=f"layer_{i}")(x, attention_mask,
                                                                        deterministic)
    return x


def count_params(params) -> int:
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))


def encoder_flops_per_token(config: EncoderConfig, length: int) -> int:
  """Forward multiply-add FLOPs (2 per MAC) of one token at sequence length `length`."""
  h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
  dense = 2 * (4 * h * h + 2 * h * i)  # q, k, v, attention output; two feed-forward matmuls
  attention = 2 * 2 * length * h  # scores and weighted values
  return n * (dense + attention)
