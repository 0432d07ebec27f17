"""Evaluation of cross-lingual retrieval: trec_eval-exact metrics, file formats, retrieval."""

from optical_jax.evaluation.io import (DataFormatError, read_corpus, read_qrels, read_run,
                                       read_topics, write_qrels, write_run, write_tsv)
from optical_jax.evaluation.metrics import (DEFAULT_MEASURES, evaluate, evaluate_per_query,
                                            parse_measure, trec_ranking)
from optical_jax.evaluation.report import (format_table, paired_bootstrap_interval,
                                          score_run_file)
from optical_jax.evaluation.retrieval import BoundEncoder, TextEncoder, retrieve
from optical_jax.evaluation.search import (dense_reranker, dense_search, maxsim_reranker,
                                          rerank_run)

__all__ = [
    "DataFormatError", "read_corpus", "read_qrels", "read_run", "read_topics", "write_qrels",
    "write_run", "write_tsv", "DEFAULT_MEASURES", "evaluate", "evaluate_per_query",
    "parse_measure", "trec_ranking", "BoundEncoder", "TextEncoder", "dense_reranker",
    "dense_search", "maxsim_reranker", "rerank_run", "retrieve", "format_table",
    "paired_bootstrap_interval", "score_run_file",
]
