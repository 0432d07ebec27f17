"""English→Somali: the paper's setting with hub models and public data (needs internet).

  pip install -e . datasets
  # CIRAL's Somali collection (English queries, Somali passages), from its public release:
  #   topics  TSV  qid<TAB>query          -> data/ciral/so/topics.tsv
  #   qrels   TREC qid 0 docid relevance  -> data/ciral/so/qrels.txt
  #   corpus  JSONL {docid, title, text}  -> data/ciral/so/corpus.jsonl
  python train.py --config configs/so.py --workdir runs/so

The teacher is the English retrieval model all-MiniLM-L6-v2 (swap in any BERT-family
checkpoint); the student starts from multilingual e5-small (XLM-R vocabulary, a different
tokenizer from the teacher's: OT aligns token sets of unequal length) and encodes the Somali
documents, so `student_side = "document"`. Bitext: NLLB English–Somali from the hub.
On a Colab TPU v2-8 (8 devices, batch 256, L=64) 20k steps take roughly 1.5-2 hours; on one
T4 GPU in bfloat16 expect about 4x longer. Offline, this config fails within seconds naming
the missing resource.
"""

import ml_collections

from optical_jax.config import base_config

CIRAL = "data/ciral/so"
CIRAL_HOW = ("Download CIRAL's Somali topics, qrels and passages (the CIRAL collection, "
             "ciralproject on GitHub / Hugging Face `CIRAL/ciral-corpus`, config `somali`) and "
             f"save them as {CIRAL}/topics.tsv, {CIRAL}/qrels.txt, {CIRAL}/corpus.jsonl.")


def get_config():
  c = base_config()
  c.model.teacher = "sentence-transformers/all-MiniLM-L6-v2"
  c.model.student = "intfloat/multilingual-e5-small"
  c.model.student_side = "document"
  c.model.dtype = "bfloat16"
  c.loss = "ot"
  c.data.hf_dataset = "allenai/nllb"
  c.data.hf_config = "eng_Latn-som_Latn"
  c.data.student_field = "translation.som_Latn"
  c.data.teacher_field = "translation.eng_Latn"
  c.data.limit = 2_000_000
  c.data.max_length = 64
  c.train.batch_size = 256
  c.train.num_train_steps = 20_000
  c.train.learning_rate = 5e-5
  c.train.warmup_steps = 1000
  c.train.eval_every_steps = 1000
  c.train.checkpoint_every_steps = 1000
  c.eval.collections = [ml_collections.ConfigDict(dict(
      name="ciral-so", topics=f"{CIRAL}/topics.tsv", corpus=f"{CIRAL}/corpus.jsonl",
      qrels=f"{CIRAL}/qrels.txt", query_encoder="teacher", doc_encoder="student",
      how_to_get=CIRAL_HOW))]
  c.eval.dev_collection = ""
  c.eval.max_length = 256
  return c
