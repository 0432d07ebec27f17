"""Training: state and optimizer, objectives, the data-parallel step, checkpoints, logging and
the loop. Importing a submodule pulls in only what it needs (this file imports nothing)."""
