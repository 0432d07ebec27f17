"""English→Somali on CIRAL: the paper's setting with hub models and public data.

  pip install -e ".[ciral]"
  python train.py --config configs/so.py --workdir runs/so
  python train.py --config configs/so.py:test-a-pools,test-b --workdir runs/so  # other splits

On first use everything comes into the Hugging Face cache, with its progress bars: the teacher
(BAAI/bge-small-en-v1.5) and student (intfloat/multilingual-e5-small), CIRAL's Somali topics
and qrels (CIRAL/ciral), its 827,552 Somali passages (CIRAL/ciral-corpus, about 1 GB) and the
so-en bitext (quickmt/quickmt-train.so-en), which is cleaned, capped at config.data.limit pairs
and split into training pairs and ~1,000 held-out pairs for dev MAP (in config.runtime.
cache_dir). `--config.ciral.local_dir=DIR` reads CIRAL from DIR/ciral and DIR/ciral-corpus
(the repositories' hub layout) instead; `--config.ciral.bitext=FILE` takes a local parquet,
TSV or JSONL bitext. Offline, a missing file fails within seconds naming what to download.

The final table has the held-out bitext (bitext-so-en) and CIRAL's dev, test-a and test-b
(MAP, nDCG@20, R@100, ...). Why these models and data: optical_jax/data/ciral.py. On a Colab
TPU v2-8 (batch 256, L=64) 20k steps take roughly 1.5-2 hours; on one T4 GPU in bfloat16
expect about 4x longer.
"""

from optical_jax.data.ciral import ciral_config


def get_config(splits: str = ""):
  return ciral_config("somali", splits)
