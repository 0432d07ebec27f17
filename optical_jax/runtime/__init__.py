"""The process runtime: what a process of a run sets up and how it stops.

- `host`: which process speaks for the run, host copies of replicated arrays.
- `host_memory`: malloc's behaviour, set before JAX starts threads.
- `console`: our messages on the console, library chatter into a log file.
- `stopping`: how a run stops: Ctrl-C that always stops the program, SIGINT and SIGTERM as a
  request to stop after the step, the line an interrupted program ends with.
- `lock`: one run at a time per workdir.
- `distributed`: joining a multi-process run, and one line naming a lost peer.
- `compilation_cache`: XLA's persistent compilation cache.

Imports only `optical_jax.files` below it; importing this package imports nothing.
"""
