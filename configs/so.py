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
(MAP, nDCG@20, R@100, ...). Why these models and data: configs/ciral.py.

Time, estimated (not measured on an accelerator yet): XLA counts 2.97 TFLOP per step (batch
256, L=64, bfloat16; `python benchmarks/accelerator.py`). A Colab TPU v2-8 has 8 x 22.5
TFLOP/s: at 40% MFU a step takes ~41 ms, 20,000 steps ~14 min. One T4 (65 TFLOP/s in float16,
no bfloat16 units) at 40%: ~114 ms a step, at least ~38 min. Encoding the 827,552 passages
for each CIRAL evaluation comes on top.
"""

from pathlib import Path
from runpy import run_path

# The config the CIRAL languages share lives beside this file.
ciral_config = run_path(str(Path(__file__).with_name("ciral.py")))["ciral_config"]


def get_config(splits: str = ""):
  return ciral_config("somali", splits)
