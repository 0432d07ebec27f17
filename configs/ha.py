"""English→Hausa on CIRAL: as configs/so.py, with Hausa passages and bitext from
sentence-transformers/parallel-sentences-ccmatrix (en-ha).

  python train.py --config configs/ha.py --workdir runs/ha
"""

from pathlib import Path
from runpy import run_path

# The config the CIRAL languages share lives beside this file.
ciral_config = run_path(str(Path(__file__).with_name("ciral.py")))["ciral_config"]


def get_config(splits: str = ""):
  return ciral_config("hausa", splits)
