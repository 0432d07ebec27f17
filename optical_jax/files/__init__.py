"""Files, caches and the on-disk layout: the package's lowest layer.

- `fileio`: files written whole or not at all, under our own temporary names.
- `cache_files`: what every cache shares (temporaries, sweeps of dead processes' ones, header
  checks, `CacheWriteError`).
- `textfiles`: text and JSON lines read with errors naming `file:line`.
- `fingerprint`: content digests of files and checkpoints.
- `token_arrays`: flat token ids with offsets, and the one tokenizer call that makes them.
- `layout`: every path of a workdir, of the cache and of the demo's directory.
- `hub`: the Hugging Face hub (offline or not, the commit a revision names).

Nothing here imports from the layers above; importing this package imports nothing.
"""
