"""English→Yoruba on CIRAL: as configs/so.py, with Yoruba passages and bitext from
Helsinki-NLP/opus-100 (en-yo).

  python train.py --config configs/yo.py --workdir runs/yo
"""

from optical_jax.data.ciral import ciral_config


def get_config(splits: str = ""):
  return ciral_config("yoruba", splits)
