"""`LoadedEncoder`: the model every layer above passes around, an encoder with its weights,
architecture, tokenizer and pooling, wherever it came from (a Hugging Face checkpoint,
`hf_checkpoint.load_encoder`; random weights, `training.lowering`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from optical_jax.models.encoder import Encoder, EncoderConfig
from optical_jax.pooling import pool


class CheckpointError(ValueError):
  """A checkpoint that cannot be loaded; the message names the file and the weight."""


@dataclasses.dataclass
class LoadedEncoder:
  """A Flax encoder with its weights and tokenizer, as `load_encoder` returns it."""

  module: Encoder
  params: Any
  config: EncoderConfig
  path: Path
  pooling: str = "mean"
  normalize: bool = False
  hf_config: dict = dataclasses.field(default_factory=dict)
  # Checkpoint weights our encoder does not use but transformers' model has (BERT's pooler),
  # by their prefix-free Hugging Face names; `hf_checkpoint.save_encoder` writes them back.
  extra_weights: dict = dataclasses.field(default_factory=dict)
  # Text put before queries and passages (e5: "query: " / "passage: "), from the checkpoint's
  # sentence-transformers config; "" where it declares none.
  prompts: dict = dataclasses.field(default_factory=lambda: {"query": "", "passage": ""})
  _tokenizer: Any = None

  @property
  def tokenizer(self):
    """The checkpoint's tokenizer (transformers' `AutoTokenizer`), loaded on first use."""
    if self._tokenizer is None:
      from transformers import AutoTokenizer
      try:
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), trust_remote_code=False)
      except Exception as e:
        raise CheckpointError(f"{self.path}: no usable tokenizer files ({e})") from None
    return self._tokenizer

  def apply(self, params: Any, input_ids: jax.Array, attention_mask: jax.Array, *,
            token_type_ids: jax.Array | None = None, deterministic: bool = True,
            rngs: Mapping[str, jax.Array] | None = None) -> jax.Array:
    """Last hidden states `[batch, length, hidden]`."""
    return self.module.apply({"params": params}, input_ids, attention_mask, token_type_ids,
                             deterministic=deterministic, rngs=rngs)

  def pool(self, hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Sentence embeddings `[batch, hidden]` the way the checkpoint's authors pool them."""
    return pool(hidden, attention_mask, method=self.pooling, normalize=self.normalize)

  def tokenize(self, texts: list[str], *, max_length: int = 128,
               pad_to: int | None = None) -> dict[str, np.ndarray]:
    """`input_ids` and `attention_mask` as int32 numpy arrays `[len(texts), width]`: at most
    `max_length` tokens a text (and at most `pad_to`), padded to `pad_to` where given, else to
    the longest text."""
    width = min(max_length, pad_to) if pad_to else max_length
    batch = self.tokenizer(list(texts), truncation=True, max_length=width, padding="longest")
    # transformers reads one max_length for truncation and padding: pad in a second call.
    batch = self.tokenizer.pad(batch, padding="max_length" if pad_to else "longest",
                               max_length=pad_to, return_tensors="np")
    return {"input_ids": batch["input_ids"].astype(np.int32),
            "attention_mask": batch["attention_mask"].astype(np.int32)}
