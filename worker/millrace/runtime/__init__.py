"""The engine behind :mod:`millrace.execution`; nothing here is public API.

- :mod:`.routing`: which worker owns a key; the same answer in every process.
- :mod:`.sources` and :mod:`.sinks`: per-worker readers and writers built from the configs.
- :mod:`.chain`: stateless steps fused into one loop per batch, ending in the per-item code
  of the keyed step they feed (routing each item on a cluster).
- :mod:`.keyed`, :mod:`.system_windows` and :mod:`.windowing`: the keyed, stateful steps.
- :mod:`.store`: the recovery store (SQLite); :mod:`.resume`: where a recovered cluster
  resumes, decided alike by every worker from every worker's store summary.
- :mod:`.epochs`: when an epoch ends at the input.
- :mod:`.worker`: one worker's loop (batches, exchange, epoch progress).
- :mod:`.errors`: how failures are named and carried.
- :mod:`.engine` and :mod:`.cluster`: one worker in this thread, or one process of a cluster;
  :mod:`.spawn`: the local processes of ``spawn_cluster``, supervised.
- :mod:`.stats`: what a worker counts as it runs, in plain ints; :mod:`.metrics` turns those
  counters into Prometheus metrics when scraped, and :mod:`.metrics_server` serves them.
"""
