"""The training tests' fixture: a tiny BERT, a bitext and triples of real sentences."""

import numpy as np
import pytest

from tests.helpers import save_tiny_bert
from tests.training.runs import SENTENCES


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("train")
  checkpoint = save_tiny_bert(root / "tiny_bert", seed=1)
  rng = np.random.default_rng(0)
  rows = [SENTENCES[i] for i in rng.integers(0, len(SENTENCES), 64)]
  bitext = root / "bitext.tsv"
  bitext.write_text("".join(f"{s}\t{t}\n" for s, t in rows))
  triples = root / "triples.tsv"
  triples.write_text("".join(f"{t}\t{s}\t{SENTENCES[(i + 1) % 4][1]}\n"
                             for i, (s, t) in enumerate(rows)))
  return root, checkpoint, bitext, triples
