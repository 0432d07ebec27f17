"""English→Hausa on CIRAL: as configs/so.py, with Hausa passages and bitext from
sentence-transformers/parallel-sentences-ccmatrix (en-ha).

  python train.py --config configs/ha.py --workdir runs/ha
"""

from optical_jax.data.ciral import ciral_config


def get_config(splits: str = ""):
  return ciral_config("hausa", splits)
