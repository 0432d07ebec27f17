"""Test helpers: tiny random checkpoints in the Hugging Face layout (built with torch), config
files loaded as `--config` loads them, and transformers' output as the parity reference."""

import shutil
from pathlib import Path

import numpy as np

from optical_jax.data.assets import minilm_checkpoint_dir

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")


def load_config(path: Path):
  """`get_config()` of a config file, as `--config=path` would load it."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def save_tiny_bert(directory: Path, *, seed: int = 0, hidden_size: int = 32,
                   vocab_size: int = 30522, layers: int = 2, masked_lm: bool = False,
                   safe_serialization: bool = True, max_position_embeddings: int = 128) -> Path:
  """A random BERT in the hub layout, with MiniLM's (real) tokenizer files."""
  import torch
  from transformers import BertConfig, BertForMaskedLM, BertModel
  torch.manual_seed(seed)
  config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                      num_attention_heads=4, intermediate_size=4 * hidden_size,
                      max_position_embeddings=max_position_embeddings)
  model = (BertForMaskedLM if masked_lm else BertModel)(config).eval()
  model.save_pretrained(directory)
  if not safe_serialization:  # transformers v5 only writes safetensors: write the old format.
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
  for name in TOKENIZER_FILES:
    source = minilm_checkpoint_dir() / name
    if source.exists():
      shutil.copy(source, directory / name)
  return directory


def save_tiny_xlmr(directory: Path, *, seed: int = 0) -> Path:
  import torch
  from transformers import XLMRobertaConfig, XLMRobertaModel
  torch.manual_seed(seed)
  config = XLMRobertaConfig(vocab_size=250, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64,
                            max_position_embeddings=66, type_vocab_size=1, pad_token_id=1)
  XLMRobertaModel(config).eval().save_pretrained(directory)
  return directory


def torch_last_hidden(directory: Path, input_ids: np.ndarray, attention_mask: np.ndarray):
  """transformers' own PyTorch output: the reference for parity."""
  import torch
  from transformers import AutoModel
  model = AutoModel.from_pretrained(str(directory)).eval()
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(input_ids).long(),
                attention_mask=torch.from_numpy(attention_mask).long())
  return out.last_hidden_state.numpy()


def assert_accepted(check, *args, **kwargs) -> None:
  """Asserts that `check` (a config check, which raises `ConfigError` naming what it refuses)
  accepts its arguments; a refusal fails the test with the check's one line."""
  import pytest
  from optical_jax.config import ConfigError
  try:
    check(*args, **kwargs)
  except ConfigError as error:
    pytest.fail(f"{check.__name__} refused it: {error}")
