"""Models: our Flax BERT-family encoder, Hugging Face checkpoints in and out, and the
distillation pair (frozen teacher, trained student with its projection)."""
