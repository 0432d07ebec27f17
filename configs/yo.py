"""English→Yoruba on CIRAL: as configs/so.py, with Yoruba passages and bitext from
Helsinki-NLP/opus-100 (en-yo).

  python train.py --config configs/yo.py --workdir runs/yo
"""

from pathlib import Path
from runpy import run_path

# The config the CIRAL languages share lives beside this file.
ciral_config = run_path(str(Path(__file__).with_name("ciral.py")))["ciral_config"]


def get_config(splits: str = ""):
  return ciral_config("yoruba", splits)
