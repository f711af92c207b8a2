"""The vocabulary every layer of millrace shares; it imports nothing else of millrace.

- :mod:`.epoch_config`: when the input starts a new epoch (``EpochConfig`` and its kinds),
  which users pass to :mod:`millrace.execution` and the runtime turns into a policy.
- :mod:`.clock`: the clocks millrace reads (:data:`~.clock.SYSTEM_CLOCK`, and the
  :class:`~.clock.ManualClock` tests drive), and which one a run starting now reads.
- :mod:`.errors`: :class:`~.errors.ClusterError`, which the runtime and the transport raise
  alike.

This is the bottom of the layers that the import contracts in ``pyproject.toml`` keep (see
"Layers" in the README). Users import these names where they always have:
``millrace.execution.PeriodicEpochConfig``, ``millrace.runtime.errors.ClusterError``.
"""
