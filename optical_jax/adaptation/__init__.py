"""A student built for its language: vocabulary adaptation and OT-induced lexicons.

- `alignment`: entropic OT plans between the initial student's token embeddings of bitext
  sentences and the teacher's of their translations (the loss's own solver, batched).
- `pieces`: WordPiece pieces learned from the student side, appended to the student's
  tokenizer.
- `embedding_init`: their word-embedding rows, the mean of the old pieces or from OT plans.
- `vocabulary`: both, written as the adapted student's checkpoint directory.
- `lexicon`: student-language word -> English words by accumulated plan mass.
- `codeswitch`: training sentences with some words replaced by their lexicon translation.
- `pipeline`: the same from a config, cached on disk (`build_models` and the input pipeline
  call it).

Layering: this package imports `optical_jax.models`, `optical_jax.losses` and the data readers;
the training stack imports it, never the reverse.
"""
