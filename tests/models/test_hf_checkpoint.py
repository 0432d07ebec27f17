"""Parity with transformers' PyTorch models and clear errors on bad checkpoints."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.helpers import save_tiny_bert, torch_last_hidden
from optical_jax import CheckpointError, load_encoder

PARITY_TOL = 1e-4


def _padded_random_batch(vocab_size: int, *, pad_id: int, seed: int = 0,
                         lengths=(12, 7, 3)) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  width = max(lengths)
  ids = np.full((len(lengths), width), pad_id, np.int32)
  mask = np.zeros((len(lengths), width), np.int32)
  for row, n in enumerate(lengths):
    ids[row, :n] = rng.integers(pad_id + 1, vocab_size, n)
    mask[row, :n] = 1
  return ids, mask


@pytest.mark.slow
def test_minilm_parity_on_real_text_with_padding(minilm_dir):
  encoder = load_encoder(minilm_dir)
  batch = encoder.tokenize(["Ndipo Mulungu anati, Kuyere kuwala; ndipo kunali kuwala.",
                            "And God said, Let there be light: and there was light.",
                            "Jesus wept."])
  assert batch["attention_mask"].min() == 0, "the batch must contain padding"
  ours = np.asarray(jax.jit(encoder.apply)(encoder.params, batch["input_ids"],
                                           batch["attention_mask"]))
  reference = torch_last_hidden(minilm_dir, batch["input_ids"], batch["attention_mask"])
  assert ours.shape == reference.shape == (3, batch["input_ids"].shape[1], 384)
  np.testing.assert_allclose(ours, reference, atol=PARITY_TOL, rtol=0)


@pytest.mark.parametrize("pad_to", [8, 40])
def test_tokenize_pads_to_pad_to_and_truncates_at_max_length(minilm_dir, pad_to):
  """`pad_to` gives the width whatever `max_length` is; texts keep at most `max_length` tokens
  (and at most `pad_to`), the same tokens as without `pad_to`."""
  encoder = load_encoder(minilm_dir)
  texts = ["Jesus wept.", "Ndipo Mulungu anati, Kuyere kuwala; ndipo kunali kuwala. " * 3]
  batch = encoder.tokenize(texts, max_length=16, pad_to=pad_to)
  plain = encoder.tokenize(texts, max_length=min(16, pad_to))
  assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, pad_to)
  assert batch["input_ids"].dtype == np.int32
  np.testing.assert_array_equal(batch["attention_mask"].sum(1), plain["attention_mask"].sum(1))
  width = plain["input_ids"].shape[1]
  np.testing.assert_array_equal(batch["input_ids"][:, :width], plain["input_ids"])
  assert (batch["input_ids"][:, width:] == encoder.tokenizer.pad_token_id).all()
  assert batch["attention_mask"].sum(1).max() == min(16, pad_to)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_xlmr_dir"])
def test_tiny_random_parity(fixture, request):
  directory = request.getfixturevalue(fixture)
  encoder = load_encoder(directory)
  ids, mask = _padded_random_batch(encoder.config.vocab_size, pad_id=encoder.config.pad_token_id)
  ours = np.asarray(encoder.apply(encoder.params, ids, mask))
  np.testing.assert_allclose(ours, torch_last_hidden(directory, ids, mask), atol=PARITY_TOL,
                             rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_xlmr_dir"])
def test_inputs_up_to_the_position_limit_match_transformers_and_longer_ones_are_refused(
    fixture, request):
  """`config.max_length` is where transformers' own model stops: at it, parity; one token
  more, torch fails and ours refuses (a clamped position id would silently reuse the last
  row)."""
  directory = request.getfixturevalue(fixture)
  encoder = load_encoder(directory)
  limit = encoder.config.max_length
  assert limit == (64 if encoder.config.roberta_positions else 128)
  ids, mask = _padded_random_batch(encoder.config.vocab_size,
                                   pad_id=encoder.config.pad_token_id, lengths=(limit, 5))
  np.testing.assert_allclose(np.asarray(encoder.apply(encoder.params, ids, mask)),
                             torch_last_hidden(directory, ids, mask), atol=PARITY_TOL, rtol=0)
  ids, mask = _padded_random_batch(encoder.config.vocab_size,
                                   pad_id=encoder.config.pad_token_id, lengths=(limit + 1, 5))
  with pytest.raises(Exception):
    torch_last_hidden(directory, ids, mask)
  with pytest.raises(ValueError, match=f"inputs of {limit + 1} tokens are longer than the "
                                       f"{limit} positions"):
    encoder.apply(encoder.params, ids, mask)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_xlmr_dir"])
def test_parameter_gradients_match_transformers(fixture, request):
  """Training relies on the backward pass (our dense layers have their own VJP): every
  parameter's gradient matches PyTorch autograd through transformers' model."""
  import torch
  from transformers import AutoModel
  from optical_jax.models.hf_checkpoint import convert_hf_weights
  directory = request.getfixturevalue(fixture)
  encoder = load_encoder(directory)
  ids, mask = _padded_random_batch(encoder.config.vocab_size, pad_id=encoder.config.pad_token_id)
  probe = np.random.default_rng(1).normal(size=(*ids.shape, encoder.config.hidden_size))
  probe = (probe * mask[..., None]).astype(np.float32)  # padded positions are not trained

  ours = jax.grad(lambda p: jnp.sum(encoder.apply(p, ids, mask) * probe))(encoder.params)
  model = AutoModel.from_pretrained(str(directory)).eval()
  hidden = model(input_ids=torch.from_numpy(ids).long(),
                 attention_mask=torch.from_numpy(mask).long()).last_hidden_state
  (hidden * torch.from_numpy(probe)).sum().backward()
  theirs = convert_hf_weights({n: p.grad.numpy() for n, p in model.named_parameters()
                               if p.grad is not None}, encoder.config)
  flat_ours = jax.tree_util.tree_flatten_with_path(ours)[0]
  flat_theirs = dict(jax.tree_util.tree_flatten_with_path(theirs)[0])
  assert len(flat_ours) == len(flat_theirs)
  for path, grad in flat_ours:
    reference = np.asarray(flat_theirs[path])
    # The floor covers gradients that are zero but for rounding (the key bias's: softmax
    # ignores a score shift shared by all keys).
    np.testing.assert_allclose(np.asarray(grad), reference,
                               atol=1e-4 * np.abs(reference).max() + 1e-7, rtol=0,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_xlmr_positions_skip_padding(tiny_xlmr_dir):
  encoder = load_encoder(tiny_xlmr_dir)
  assert encoder.config.roberta_positions and encoder.config.pad_token_id == 1
  ids, mask = _padded_random_batch(encoder.config.vocab_size, pad_id=1, lengths=(5, 5))
  left_padded = np.concatenate([np.ones((2, 3), np.int32), ids], axis=1)
  left_mask = np.concatenate([np.zeros((2, 3), np.int32), mask], axis=1)
  plain = encoder.apply(encoder.params, ids, mask)
  shifted = encoder.apply(encoder.params, left_padded, left_mask)[:, 3:]
  np.testing.assert_allclose(np.asarray(shifted), np.asarray(plain), atol=1e-5)


def test_prefixed_checkpoint_with_heads_and_torch_bin(tmp_path):
  directory = save_tiny_bert(tmp_path / "mlm", masked_lm=True, safe_serialization=False,
                             seed=3)
  assert (directory / "pytorch_model.bin").exists()
  encoder = load_encoder(directory)
  ids, mask = _padded_random_batch(encoder.config.vocab_size, pad_id=0, seed=1)
  ours = np.asarray(encoder.apply(encoder.params, ids, mask))
  np.testing.assert_allclose(ours, torch_last_hidden(directory, ids, mask), atol=PARITY_TOL,
                             rtol=0)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params(tiny_bert_dir):
  full = load_encoder(tiny_bert_dir)
  half = load_encoder(tiny_bert_dir, dtype=jnp.bfloat16)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(half.params))
  ids, mask = _padded_random_batch(full.config.vocab_size, pad_id=0)
  out_half = half.apply(half.params, ids, mask)
  assert out_half.dtype == jnp.bfloat16
  err = np.abs(np.asarray(out_half, np.float32) - np.asarray(full.apply(full.params, ids, mask)))
  assert err.max() < 0.1


@pytest.mark.slow
def test_remat_and_dropout_paths_match_plain(tiny_bert_dir):
  plain = load_encoder(tiny_bert_dir)
  remat = load_encoder(tiny_bert_dir, remat=True)
  ids, mask = _padded_random_batch(plain.config.vocab_size, pad_id=0)

  def loss(encoder, params, deterministic=True, rngs=None):
    return jnp.sum(encoder.apply(params, ids, mask, deterministic=deterministic, rngs=rngs) ** 2)

  g_plain = jax.grad(lambda p: loss(plain, p))(plain.params)
  g_remat = jax.grad(lambda p: loss(remat, p))(plain.params)
  # atol 2e-5: XLA versions fuse the recomputed forward differently (jaxlib 0.6, the lowest
  # declared, moves a few near-zero entries by 1.2e-5).
  for a, b in zip(jax.tree_util.tree_leaves(g_plain), jax.tree_util.tree_leaves(g_remat)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
  # A vanishing dropout rate takes the explicit (non-fused) attention path: same numbers.
  tiny_drop = load_encoder(tiny_bert_dir, dropout=1e-9)
  explicit = tiny_drop.apply(plain.params, ids, mask, deterministic=False,
                             rngs={"dropout": jax.random.PRNGKey(0)})
  np.testing.assert_allclose(explicit, plain.apply(plain.params, ids, mask), atol=1e-5)
  dropped = load_encoder(tiny_bert_dir, dropout=0.5).apply(
      plain.params, ids, mask, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
  assert not np.allclose(dropped, explicit, atol=1e-3)


def _perturbed(params, seed: int = 1):
  """Parameters that no checkpoint on disk holds, as after training."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.slow
@pytest.mark.parametrize("fixture,own_config", [("tiny_bert_dir", True),
                                                ("tiny_xlmr_dir", True),
                                                ("tiny_xlmr_dir", False)])
def test_saved_checkpoint_loads_in_ours_and_in_transformers(fixture, own_config, request,
                                                            tmp_path):
  from optical_jax import save_hf_checkpoint
  encoder = load_encoder(request.getfixturevalue(fixture))
  params = _perturbed(encoder.params)
  saved = save_hf_checkpoint(tmp_path / "saved", params, encoder.config,
                             hf_config=encoder.hf_config if own_config else None)
  reloaded = load_encoder(saved)
  assert reloaded.config == encoder.config
  jax.tree_util.tree_map(np.testing.assert_array_equal, reloaded.params, params)
  ids, mask = _padded_random_batch(encoder.config.vocab_size, pad_id=encoder.config.pad_token_id)
  ours = np.asarray(encoder.apply(params, ids, mask))
  np.testing.assert_allclose(torch_last_hidden(saved, ids, mask), ours, atol=PARITY_TOL, rtol=0)


def test_saving_mismatched_params_or_config_is_named(tiny_bert_dir, tmp_path):
  from optical_jax import save_hf_checkpoint
  encoder = load_encoder(tiny_bert_dir)
  extra = {**encoder.params, "projection": {"kernel": np.zeros((32, 8), np.float32)}}
  with pytest.raises(ValueError, match="unexpected projection/kernel"):
    save_hf_checkpoint(tmp_path / "a", extra, encoder.config)
  layers = {k: v for k, v in encoder.params.items() if k != "layer_1"}
  with pytest.raises(ValueError, match="missing layer_1/"):
    save_hf_checkpoint(tmp_path / "b", layers, encoder.config)
  with pytest.raises(ValueError, match="hf_config describes"):
    save_hf_checkpoint(tmp_path / "c", encoder.params, encoder.config,
                       hf_config={**encoder.hf_config, "intermediate_size": 64})
  assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def _copy(directory, tmp_path):
  target = tmp_path / "ckpt"
  shutil.copytree(directory, target)
  return target


def test_missing_config_is_named(tiny_bert_dir, tmp_path):
  directory = _copy(tiny_bert_dir, tmp_path)
  (directory / "config.json").unlink()
  with pytest.raises(CheckpointError, match=r"config\.json: missing"):
    load_encoder(directory)


def test_unknown_architecture_is_named(tiny_bert_dir, tmp_path):
  directory = _copy(tiny_bert_dir, tmp_path)
  config = json.loads((directory / "config.json").read_text())
  config["model_type"] = "gpt2"
  (directory / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match=r"config\.json: model_type 'gpt2' is not a supported"):
    load_encoder(directory)


def test_wrong_shape_missing_and_unexpected_weights_are_named(tiny_bert_dir, tmp_path):
  directory = _copy(tiny_bert_dir, tmp_path)
  weights = load_file(directory / "model.safetensors")
  weights["encoder.layer.1.output.dense.weight"] = np.zeros((3, 3), np.float32)
  del weights["encoder.layer.0.attention.self.key.bias"]
  weights["encoder.layer.0.adapter.weight"] = np.zeros((2,), np.float32)
  save_file(weights, directory / "model.safetensors")
  with pytest.raises(CheckpointError) as info:
    load_encoder(directory)
  message = str(info.value)
  assert "model.safetensors" in message
  assert "encoder.layer.1.output.dense.weight has shape (3, 3)" in message
  assert "missing weight encoder.layer.0.attention.self.key.bias" in message
  assert "unexpected weight encoder.layer.0.adapter.weight" in message


def test_hub_id_resolves_from_the_cache_offline(minilm_dir, tmp_path, monkeypatch):
  snapshot = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "abc123"
  shutil.copytree(minilm_dir, snapshot)
  (snapshot.parents[1] / "refs").mkdir()
  (snapshot.parents[1] / "refs" / "main").write_text("abc123")
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
  import huggingface_hub.constants
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
  encoder = load_encoder("sentence-transformers/all-MiniLM-L6-v2")
  assert encoder.path == snapshot and encoder.config.hidden_size == 384
  assert encoder.tokenizer("hello")["input_ids"][0] == 101


def test_missing_hub_model_offline_fails_fast_with_instructions(monkeypatch):
  import socket
  connects = []  # fast: no connection is tried (nor retried), offline
  monkeypatch.setattr(socket.socket, "connect", lambda self, address: connects.append(address))
  with pytest.raises(CheckpointError) as info:
    load_encoder("intfloat/no-such-model-anywhere")
  assert connects == []
  assert "HF_HUB_OFFLINE=1" in str(info.value) and "hf download" in str(info.value)


def test_tokenizers_load_without_running_repository_code(tiny_bert_dir, monkeypatch, tmp_path):
  from transformers import AutoTokenizer
  from optical_jax.adaptation.pieces import extend_tokenizer
  loaded = AutoTokenizer.from_pretrained.__func__
  asked = []

  def recording(cls, *args, **kwargs):
    asked.append(kwargs.get("trust_remote_code", "not given"))
    return loaded(cls, *args, **kwargs)

  monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(recording))
  tokenizer = load_encoder(tiny_bert_dir).tokenizer
  extend_tokenizer(tokenizer, ["ndipozzz"], tmp_path / "extended")
  assert asked == [False, False]


def test_a_relative_path_that_does_not_exist_says_neither_it_nor_the_hub_model_is_there(
    tmp_path, monkeypatch):
  # `exports/so` reads as a hub id too: one line saying that neither is there.
  monkeypatch.chdir(tmp_path)
  with pytest.raises(CheckpointError) as info:
    load_encoder("exports/so")
  message = str(info.value)
  assert message.startswith(f"exports/so: no local directory {tmp_path / 'exports' / 'so'}, "
                            "and no hub model exports/so in the cache (HF_HUB_OFFLINE=1); give "
                            "an existing checkpoint directory"), message
  assert "\n" not in message


def test_a_hub_model_loads_at_the_commit_asked_for(tiny_bert_dir, tmp_path, monkeypatch):
  import huggingface_hub
  from optical_jax.config import base_config
  from optical_jax.models.student import build_models
  asked = []

  def snapshot_download(repo_id, **kwargs):
    asked.append((repo_id, kwargs["revision"]))
    snapshot = tmp_path / repo_id.replace("/", "--") / "snapshots" / kwargs["revision"]
    if not snapshot.exists():
      shutil.copytree(tiny_bert_dir, snapshot)
    return str(snapshot)

  monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
  config = base_config()
  config.model.teacher, config.model.teacher_revision = "org/teacher", "1" * 40
  config.model.student, config.model.student_revision = "org/student", "2" * 40
  models = build_models(config)
  assert asked == [("org/teacher", "1" * 40), ("org/student", "2" * 40)]
  assert models.teacher.path.name == "1" * 40 and models.student.path.name == "2" * 40
