"""Loads Hugging Face BERT-family checkpoints into our Flax encoder.

Reads `config.json` and `model.safetensors` (sharded too), or `pytorch_model.bin` when
torch happens to be installed, from a local directory in the hub's layout or from the hub
(through huggingface_hub, or its cache when offline). transformers is used for the
tokenizer only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from optical_jax.files.hub import hub_offline
from optical_jax.models.encoder import Encoder, EncoderConfig
from optical_jax.models.loaded import CheckpointError, LoadedEncoder

# The files of a sentence-transformers checkpoint that say how it pools.
_POOLING_FILES = ("modules.json", "1_Pooling/config.json")
# The file of a sentence-transformers checkpoint that names its query and passage prefixes.
_PROMPTS_FILE = "config_sentence_transformers.json"
# Files a checkpoint needs, for the hub download: no duplicate weight formats.
_HUB_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json",
                 "tokenizer*", "vocab*", "special_tokens_map.json", "sentencepiece*",
                 "merges.txt", *_POOLING_FILES, _PROMPTS_FILE]
# Weights a checkpoint may carry that an encoder does not use.
_IGNORED_WEIGHTS = re.compile(
    r"^(pooler\.|cls\.|lm_head\.|classifier\.|qa_outputs\.|embeddings\.position_ids$)")
_PREFIXES = ("bert.", "roberta.", "xlm_roberta.", "model.")


def is_hub_id(name_or_path: str | os.PathLike) -> bool:
  """Whether a model reference is read from the hub: not an existing path, and shaped like a
  hub id (`name` or `org/name`, not starting with '.', '/' or '~')."""
  name = str(name_or_path)
  return bool(name) and not Path(name).expanduser().exists() and not (
      name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name)


def resolve_checkpoint_dir(name_or_path: str | os.PathLike, revision: str = "") -> Path:
  """A local directory holding the checkpoint: the path itself, or the hub snapshot of
  `revision` (a commit, as `config.json` of a run records it; "": the default branch).

  Offline (`HF_HUB_OFFLINE=1`) only the local cache is consulted, so a missing model
  fails at once with a message saying what to download, instead of retrying the network.
  """
  path = Path(name_or_path).expanduser()
  if path.is_dir():
    return path
  name = str(name_or_path)
  if path.exists():
    raise CheckpointError(f"{name}: is a file; expected a checkpoint directory holding "
                          "config.json and model.safetensors")
  if not is_hub_id(name):
    raise CheckpointError(f"{name}: no such checkpoint directory")
  from huggingface_hub import snapshot_download
  offline = hub_offline()
  at = f" at commit {revision}" if revision else ""
  try:
    snapshot = snapshot_download(name, revision=revision or None, allow_patterns=_HUB_PATTERNS,
                                 local_files_only=offline)
  except Exception as e:  # huggingface_hub raises several types for "not here, not reachable"
    # `org/name` is also how a relative path reads (exports/so): say that neither is there.
    local = f"no local directory {path.absolute()}, and " if "/" in name else (
        "not a local directory, and ")
    how = (f"give an existing checkpoint directory in the hub's layout (config.json, "
           f"model.safetensors, tokenizer files), or download the hub model{at} where there is "
           f"internet (`hf download {name}{f' --revision {revision}' if revision else ''}`) "
           f"into the cache {os.environ.get('HF_HUB_CACHE') or '~/.cache/huggingface/hub'}")
    state = (f"no hub model {name}{at} in the cache (HF_HUB_OFFLINE=1)" if offline else
             f"the hub could not provide a model {name}{at} ({type(e).__name__}: "
             f"{(str(e).strip().splitlines() or [''])[0][:200]})")
    raise CheckpointError(f"{name}: {local}{state}; {how}") from None
  snapshot = Path(snapshot)
  if not any(snapshot.glob("*.safetensors")) and not offline:
    snapshot = Path(snapshot_download(name, revision=revision or None,
                                      allow_patterns=["pytorch_model.bin"]))
  return snapshot


def read_hf_config(directory: Path) -> tuple[EncoderConfig, dict]:
  config_path = directory / "config.json"
  if not config_path.is_file():
    raise CheckpointError(f"{config_path}: missing; a Hugging Face checkpoint directory needs "
                          "config.json")
  try:
    raw = json.loads(config_path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{config_path}:{e.lineno}: invalid JSON ({e.msg})") from None
  try:
    return EncoderConfig.from_hf_dict(raw, source=str(config_path)), raw
  except ValueError as e:
    raise CheckpointError(str(e)) from None


def read_hf_weights(directory: Path) -> tuple[dict[str, np.ndarray], Path]:
  """All tensors of the checkpoint as float32 numpy arrays, and the file they came from."""
  single = directory / "model.safetensors"
  index = directory / "model.safetensors.index.json"
  if single.is_file() or index.is_file():
    from safetensors import safe_open
    files = [single] if single.is_file() else sorted(
        {directory / f for f in json.loads(index.read_text())["weight_map"].values()})
    weights = {}
    for file in files:
      try:
        # framework="flax" reads bfloat16 tensors, which plain numpy cannot.
        with safe_open(str(file), framework="flax") as f:
          for key in f.keys():
            weights[key] = np.asarray(f.get_tensor(key), dtype=np.float32)
      except Exception as e:
        raise CheckpointError(f"{file}: unreadable safetensors file ({e})") from None
    return weights, (single if single.is_file() else index)
  bin_path = directory / "pytorch_model.bin"
  if bin_path.is_file():
    try:
      import torch
    except ImportError:
      raise CheckpointError(f"{bin_path}: reading pytorch_model.bin needs torch; install it or "
                            "convert the checkpoint to model.safetensors") from None
    state = torch.load(bin_path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}, bin_path
  raise CheckpointError(f"{directory}: no model.safetensors, model.safetensors.index.json or "
                        "pytorch_model.bin")


def _hf_name_and_transforms(path: tuple[str, ...], config: EncoderConfig
                            ) -> tuple[str, Callable[[np.ndarray], np.ndarray],
                                       Callable[[np.ndarray], np.ndarray]]:
  """Hugging Face's name for our parameter at `path`, how its array maps to ours, and back."""
  identity = lambda w: w
  leaf = path[-1]
  heads = config.num_attention_heads
  head_dim = config.hidden_size // heads
  if path[0] == "embeddings":
    module = path[1]
    if module == "LayerNorm":
      return (f"embeddings.LayerNorm.{'weight' if leaf == 'scale' else 'bias'}", identity,
              identity)
    return f"embeddings.{module}.weight", identity, identity
  layer = int(path[0].removeprefix("layer_"))
  module = path[1] if path[1] != "attention_self" else "attention_self_" + path[2]
  hf_module = {
      "attention_self_query": "attention.self.query",
      "attention_self_key": "attention.self.key",
      "attention_self_value": "attention.self.value",
      "attention_output_dense": "attention.output.dense",
      "attention_output_LayerNorm": "attention.output.LayerNorm",
      "intermediate_dense": "intermediate.dense",
      "output_dense": "output.dense",
      "output_LayerNorm": "output.LayerNorm",
  }[module]
  prefix = f"encoder.layer.{layer}.{hf_module}"
  if leaf == "scale":
    return f"{prefix}.weight", identity, identity
  if leaf == "kernel":
    if module.startswith("attention_self_"):  # torch [out, in] <-> [in, heads, head_dim]
      return (f"{prefix}.weight", lambda w: w.T.reshape(w.shape[1], heads, head_dim),
              lambda k: k.reshape(k.shape[0], heads * head_dim).T)
    return f"{prefix}.weight", lambda w: w.T, lambda k: k.T
  if module.startswith("attention_self_"):
    return f"{prefix}.bias", lambda b: b.reshape(heads, head_dim), lambda b: b.reshape(-1)
  return f"{prefix}.bias", identity, identity


def _strip_prefix(name: str) -> str:
  for prefix in _PREFIXES:
    if name.startswith(prefix):
      return name[len(prefix):]
  return name


def _parameter_shapes(config: EncoderConfig) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
  """Our encoder's parameters by path, as shapes (nothing is computed)."""
  template = jax.eval_shape(
      lambda: Encoder(config).init(jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32),
                                   jnp.ones((1, 2), jnp.int32)))["params"]
  return {tuple(k.key for k in key_path): leaf
          for key_path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]}


def convert_hf_weights(weights: Mapping[str, np.ndarray], config: EncoderConfig, *,
                       source: str = "checkpoint") -> dict:
  """Maps a Hugging Face state dict onto our parameter tree, checking every shape.

  Accepts names with or without the `bert.` / `roberta.` prefix. Raises `CheckpointError`
  naming every missing, unexpected or mis-shaped weight.
  """
  by_name = {_strip_prefix(k): (k, v) for k, v in weights.items()}
  converted, used, problems = {}, set(), []
  for path, shape_struct in _parameter_shapes(config).items():
    hf_name, transform, _ = _hf_name_and_transforms(path, config)
    if hf_name not in by_name:
      problems.append(f"missing weight {hf_name} (shape {tuple(shape_struct.shape)})")
      continue
    original_name, array = by_name[hf_name]
    used.add(hf_name)
    try:
      value = transform(np.asarray(array))
    except ValueError:
      value = None
    if value is None or value.shape != shape_struct.shape:
      problems.append(f"weight {original_name} has shape {tuple(np.shape(array))}, "
                      f"config.json implies {tuple(shape_struct.shape)} (as {'/'.join(path)})")
      continue
    node = converted
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = jnp.asarray(value, dtype=jnp.float32)
  unexpected = sorted(orig for name, (orig, _) in by_name.items()
                      if name not in used and not _IGNORED_WEIGHTS.match(name))
  problems += [f"unexpected weight {name}" for name in unexpected]
  if problems:
    shown = "; ".join(problems[:20]) + (f"; ... {len(problems) - 20} more"
                                         if len(problems) > 20 else "")
    raise CheckpointError(f"{source}: {shown}")
  return converted


def save_hf_checkpoint(directory: str | os.PathLike, params: Any, config: EncoderConfig, *,
                       hf_config: Mapping[str, Any] | None = None,
                       extra_weights: Mapping[str, np.ndarray] | None = None) -> Path:
  """Writes an encoder as a Hugging Face checkpoint directory, the inverse of `load_encoder`
  (`save_encoder` adds the tokenizer and the sentence-transformers files).

  `config.json` and `model.safetensors` carry the names and layouts of transformers'
  `BertModel` / `XLMRobertaModel`, so `load_encoder` and transformers' PyTorch models both
  load the directory. Tokenizer files are not written: `encoder.tokenizer.save_pretrained(
  directory)` adds them.

  Args:
    directory: created if missing; its config.json and model.safetensors are replaced.
    params: the encoder's parameter tree (`LoadedEncoder.params`, or a trained student's).
    config: the encoder's architecture.
    hf_config: the config.json to write, e.g. `LoadedEncoder.hf_config`, which keeps the
      fields we do not use (token ids, architectures); default: `config.to_hf_dict()`.
    extra_weights: weights the encoder does not use but transformers' model expects, by
      their Hugging Face names (`LoadedEncoder.extra_weights`: BERT's pooler), written as
      they are so that transformers initialises nothing anew.

  Returns:
    The directory, as a `Path`.

  Raises:
    ValueError: `params` is not an encoder tree of `config`'s shapes, or `hf_config`
      describes another architecture.
  """
  from safetensors.numpy import save_file
  hf_config = dict(hf_config) if hf_config is not None else config.to_hf_dict()
  described = EncoderConfig.from_hf_dict(hf_config, source="hf_config")
  if described.to_hf_dict(architecture_only=True) != config.to_hf_dict(architecture_only=True):
    raise ValueError(f"hf_config describes {described.to_hf_dict(architecture_only=True)}, "
                     f"config {config.to_hf_dict(architecture_only=True)}")
  expected = {path: leaf.shape for path, leaf in _parameter_shapes(config).items()}
  given = {tuple(k.key for k in key_path): np.asarray(leaf, np.float32)
           for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  problems = [f"missing {'/'.join(p)}" for p in expected if p not in given]
  problems += [f"unexpected {'/'.join(p)}" for p in given if p not in expected]
  problems += [f"{'/'.join(p)} has shape {given[p].shape}, config implies {shape}"
               for p, shape in expected.items() if p in given and given[p].shape != shape]
  if problems:
    raise ValueError("params do not match the encoder config: " + "; ".join(problems[:20]))
  weights = {}
  for path, value in given.items():
    hf_name, _, to_hf = _hf_name_and_transforms(path, config)
    weights[hf_name] = np.ascontiguousarray(to_hf(value))
  for name, value in (extra_weights or {}).items():
    weights[name] = np.ascontiguousarray(value, np.float32)
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  # transformers loads safetensors into PyTorch only when they say they are in its format.
  save_file(weights, str(directory / "model.safetensors.tmp"), metadata={"format": "pt"})
  os.replace(directory / "model.safetensors.tmp", directory / "model.safetensors")
  (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n",
                                         encoding="utf-8")
  return directory


def _sentence_transformers_pooling(directory: Path) -> tuple[str, bool]:
  """Pooling and normalisation declared by a sentence-transformers checkpoint, else mean."""
  modules, pooling_config = (directory / name for name in _POOLING_FILES)
  normalize = False
  if modules.is_file():
    normalize = any("Normalize" in m.get("type", "") for m in json.loads(modules.read_text()))
  if pooling_config.is_file():
    cfg = json.loads(pooling_config.read_text())
    if cfg.get("pooling_mode_cls_token"):
      return "cls", normalize
  return "mean", normalize


# Prompt names sentence-transformers checkpoints use for the two sides of retrieval.
_PROMPT_NAMES = {"query": ("query", "queries", "search_query"),
                 "passage": ("passage", "document", "documents", "corpus", "search_document")}


def sentence_transformers_prompts(directory: str | Path) -> dict[str, str]:
  """`{"query": prefix, "passage": prefix}`: the text a sentence-transformers checkpoint puts
  before queries and before passages, from the "prompts" of its
  `config_sentence_transformers.json` (e5: "query: " / "passage: "); "" where it declares
  none. Exact names first ("query", "passage", "document", ...), then names ending in one
  ("retrieval.query")."""
  path = Path(directory) / _PROMPTS_FILE
  prompts = {}
  if path.is_file():
    try:
      prompts = json.loads(path.read_text(encoding="utf-8")).get("prompts") or {}
    except (json.JSONDecodeError, AttributeError) as e:
      raise ValueError(f"{path}: not a JSON object with \"prompts\" ({e})") from None
  found = {}
  for side, names in _PROMPT_NAMES.items():
    exact = [prompts[n] for n in names if isinstance(prompts.get(n), str)]
    suffixed = [v for k, v in prompts.items() if isinstance(v, str)
                and k.lower().rsplit(".", 1)[-1].rsplit("_", 1)[-1] in names]
    found[side] = (exact or suffixed or [""])[0]
  return found


def save_encoder(encoder: LoadedEncoder, directory: str | os.PathLike,
                 params: Any = None) -> Path:
  """`encoder`, with `params` (e.g. trained ones) in place of its own, as a Hugging Face
  checkpoint directory: weights and config.json (`save_hf_checkpoint`), the tokenizer, and
  the sentence-transformers pooling and prompt files that `load_encoder` reads."""
  directory = save_hf_checkpoint(directory, encoder.params if params is None else params,
                                 encoder.config, hf_config=encoder.hf_config,
                                 extra_weights=encoder.extra_weights)
  encoder.tokenizer.save_pretrained(str(directory))
  for name in (*_POOLING_FILES, _PROMPTS_FILE):
    if (encoder.path / name).is_file():
      (directory / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(encoder.path / name, directory / name)
  return directory


def load_encoder(name_or_path: str | os.PathLike, *, dtype: Any = jnp.float32,
                 remat: bool = False, dropout: float | None = None,
                 attention: str = "xla", revision: str = "") -> LoadedEncoder:
  """Loads a BERT-family Hugging Face checkpoint as a Flax encoder.

  Args:
    name_or_path: a hub id (`sentence-transformers/all-MiniLM-L6-v2`, `xlm-roberta-base`)
      or a local directory in the hub's layout.
    dtype: compute dtype; parameters are always float32.
    remat: gradient checkpointing per layer.
    dropout: overrides the checkpoint's hidden and attention dropout rates.
    attention: the attention implementation, "xla" or "cudnn" (see `Encoder`).
    revision: for a hub id, the commit to load ("": the default branch).

  Returns:
    A `LoadedEncoder` with `.params`, `.config`, `.tokenizer` and `.apply(params,
    input_ids, attention_mask)` giving `[batch, length, hidden]`.
  """
  directory = resolve_checkpoint_dir(name_or_path, revision)
  config, raw = read_hf_config(directory)
  if dropout is not None:
    config = dataclasses.replace(config, hidden_dropout_prob=dropout,
                                 attention_probs_dropout_prob=dropout)
  weights, weights_file = read_hf_weights(directory)
  params = convert_hf_weights(weights, config, source=str(weights_file))
  pooling, normalize = _sentence_transformers_pooling(directory)
  return LoadedEncoder(module=Encoder(config, dtype=dtype, remat=remat, attention=attention),
                       params=params, config=config, path=directory, pooling=pooling,
                       normalize=normalize, hf_config=raw,
                       extra_weights={_strip_prefix(k): v for k, v in weights.items()
                                      if _strip_prefix(k).startswith("pooler.")},
                       prompts=sentence_transformers_prompts(directory))

