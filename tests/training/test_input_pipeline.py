"""Idf token weights of the training rows: the OT marginals of `config.ot.marginals` "idf"."""

import numpy as np
import pytest

from tests.training.runs import SENTENCES


def _batches(checkpoint, tmp_path, shards=None, lengths=None):
  from optical_jax import load_encoder
  from optical_jax.config import base_config
  from optical_jax.models.student import DistillationModels
  from optical_jax.training.input_pipeline import gather_lengths, make_batches
  encoder = load_encoder(str(checkpoint))
  config = base_config()
  config.train.batch_size, config.data.max_length = 4, 32
  config.ot.marginals = "idf"
  models = DistillationModels(encoder, encoder)
  rows = [(s, t) for s, t in SENTENCES] + [(t, s) for s, t in SENTENCES[:2]]
  # Every row's lengths: what the processes' all-gather gives (kept from the one-process run).
  lengths = {} if lengths is None else lengths
  gather = lambda local, n, k: (lengths["all"] if "all" in lengths
                                else lengths.setdefault("all", gather_lengths(local, n, k)))
  return config, models, rows, make_batches(config, models, rows, tmp_path, shards=shards,
                                            gather=gather), lengths


def test_idf_weights_count_every_shards_rows_and_weigh_each_batch_token(setup, tmp_path):
  from optical_jax.training.input_pipeline import local_batch, token_weights
  _, checkpoint, _, _ = setup
  config, models, rows, batches, lengths = _batches(checkpoint, tmp_path)
  tables = token_weights(config, models, batches)
  # Against the tokenizer on the rows directly: idf = log((n + 1) / (df + 1)).
  tokenizer = models.student.tokenizer
  for side, column in (("student", 0), ("teacher", 1)):
    ids = [set(tokenizer(r[column], truncation=True, max_length=32)["input_ids"]) for r in rows]
    for token in {t for row in ids for t in row}:
      df = sum(token in row for row in ids)
      assert np.isclose(tables[side][token], np.log((len(rows) + 1) / (df + 1)), rtol=1e-6)
  assert tables["student"][tokenizer.cls_token_id] == 0.0  # every row has [CLS]
  # Two processes, each counting its own shards, add up to the same tables.
  half = _batches(checkpoint, tmp_path, shards=[0, 1], lengths=lengths)[3]
  other = _batches(checkpoint, tmp_path, shards=[2, 3], lengths=lengths)[3]
  other_counts = {}
  token_weights(config, models, other,
                sum_counts=lambda df: other_counts.setdefault(len(other_counts), df))
  sides = iter(other_counts.values())
  split = token_weights(config, models, half, sum_counts=lambda df: df + next(sides))
  for side in tables:
    np.testing.assert_array_equal(split[side], tables[side])
  # Each batch token weighs its id's idf; padding weighs nothing.
  batch = local_batch(batches, None, 0, tables)
  for side in tables:
    expected = tables[side][batch[f"{side}_ids"]] * batch[f"{side}_mask"]
    np.testing.assert_array_equal(batch[f"{side}_weights"], expected)
    assert (batch[f"{side}_weights"][batch[f"{side}_mask"] == 0] == 0).all()
  config.ot.marginals = "uniform"
  assert token_weights(config, models, batches) is None


def _window_batches(checkpoint, cache, *, pair_window, shards=None, lengths=None, rows=None,
                    sizes="fixed"):
  """Batches of 4 rows (4 shards) of pairs of the test sentences, max_length 32."""
  from optical_jax import load_encoder
  from optical_jax.config import base_config
  from optical_jax.models.student import DistillationModels
  from optical_jax.training.input_pipeline import gather_lengths, make_batches
  encoder = load_encoder(str(checkpoint))
  config = base_config()
  config.train.batch_size, config.data.max_length = 4, 32
  config.data.pair_window, config.data.pair_window_sizes = pair_window, sizes
  rng = np.random.default_rng(3)
  if rows is None:
    rows = [SENTENCES[i] for i in rng.integers(0, len(SENTENCES), 96)]
  lengths = {} if lengths is None else lengths
  gather = lambda local, n, k: (lengths["all"] if "all" in lengths
                                else lengths.setdefault("all", gather_lengths(local, n, k)))
  batches = make_batches(config, DistillationModels(encoder, encoder), rows, cache,
                         shards=shards, gather=gather)
  return batches, lengths


def _epoch(batches):
  return [batches.batch(step) for step in range(batches.steps_per_epoch)]


@pytest.mark.parametrize("sizes", ["fixed", "uniform"])
def test_pair_window_batches_are_the_same_on_any_processes_and_in_every_run(setup, tmp_path,
                                                                           sizes):
  """Windows are found from every row, so processes holding some shards (each with its own
  cache, as on separate hosts) feed their rows of the one-process batches, run after run."""
  from optical_jax import load_encoder
  _, checkpoint, _, _ = setup
  whole, lengths = _window_batches(checkpoint, tmp_path / "one", pair_window=3, sizes=sizes)
  assert whole.num_examples < 96  # pairs were joined
  tokenizer = load_encoder(str(checkpoint)).tokenizer
  decoded = [tokenizer.decode(ids[mask == 1], skip_special_tokens=True)
             for batch in _epoch(whole)
             for ids, mask in zip(batch["student_ids"], batch["student_mask"])]
  assert max(d.count(".") for d in decoded) > 1  # an example of several sentences
  again = _window_batches(checkpoint, tmp_path / "again", pair_window=3, sizes=sizes)[0]
  halves = [_window_batches(checkpoint, tmp_path / f"process{i}", pair_window=3,
                            shards=shards, lengths=lengths, sizes=sizes)[0]
            for i, shards in enumerate(([0, 1], [2, 3]))]
  for step, batch in enumerate(_epoch(whole)):
    for key, value in batch.items():
      np.testing.assert_array_equal(again.batch(step)[key], value)
      np.testing.assert_array_equal(np.concatenate([h.batch(step)[key] for h in halves]), value)


def test_a_window_of_one_pair_makes_todays_batches_bit_for_bit(setup, tmp_path):
  from optical_jax.data.bitext import ListRows
  from optical_jax.data.windows import WindowRows
  _, checkpoint, _, _ = setup
  rng = np.random.default_rng(3)
  rows = [SENTENCES[i] for i in rng.integers(0, len(SENTENCES), 96)]
  today = _window_batches(checkpoint, tmp_path / "plain", pair_window=1, rows=rows)[0]
  base = ListRows(rows)
  ones = WindowRows(base, np.arange(len(rows) + 1), base.longest_chars())
  windowed = _window_batches(checkpoint, tmp_path / "ones", pair_window=1, rows=ones)[0]
  assert windowed.steps_per_epoch == today.steps_per_epoch
  assert not list((tmp_path / "plain").glob("windows-*"))  # no windows looked for
  for mine, theirs in zip(_epoch(windowed), _epoch(today)):
    assert mine.keys() == theirs.keys()
    for key in mine:
      assert mine[key].dtype == theirs[key].dtype
      np.testing.assert_array_equal(mine[key], theirs[key])
