"""Running rounds on a host: the driver, the NRE budget and its ledger, run
directories and checkpoints, and the device layout (seed sharding, data
parallelism).

The oracle is called only here (:mod:`~banel_jax.runtime.budget`), so every
reward evaluation is counted, written to the ledger before it is used, and
answered from the ledger when a run resumes.
"""
