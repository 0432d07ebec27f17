"""English→Swahili on CIRAL: as configs/so.py, with Swahili passages and bitext from
sentence-transformers/parallel-sentences-ccmatrix (en-sw).

  python train.py --config configs/sw.py --workdir runs/sw
"""

from optical_jax.data.ciral import ciral_config


def get_config(splits: str = ""):
  return ciral_config("swahili", splits)
