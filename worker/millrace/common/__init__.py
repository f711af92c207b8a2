"""The vocabulary every layer of millrace shares; it imports nothing else of millrace.

- :mod:`.epoch_config`: when the input starts a new epoch (``EpochConfig`` and its kinds),
  which users pass to :mod:`millrace.execution` and the runtime turns into a policy.
- :mod:`.errors`: :class:`~.errors.ClusterError`, which the runtime and the transport raise
  alike.

The layers above, and the contract in ``pyproject.toml`` that keeps them apart (checked by
``lint-imports`` in the test suite): the public entry points (:mod:`millrace.execution`,
:mod:`millrace.pod`, ...) use :mod:`millrace.runtime`, which uses :mod:`millrace.transport`;
none of them is imported by a layer below it. Users import these names from the public
modules (``millrace.execution.PeriodicEpochConfig``, ``millrace.runtime.errors.ClusterError``).
"""
