"""The paper's algorithm as pure functions.

Nothing here does I/O or holds state: a model is a bundle of pure functions
(:mod:`~banel_jax.core.types`), failure models and distillation are weighted
maximum-likelihood fits (:mod:`~banel_jax.core.mle`,
:mod:`~banel_jax.core.failure`, :mod:`~banel_jax.core.distill`), the exploration
posterior and its rejection regions live in :mod:`~banel_jax.core.posterior`, and
:mod:`~banel_jax.core.banel` composes them into BaNEL's ``init`` / ``propose`` /
``update``. :mod:`~banel_jax.core.protocol` holds what every method's round
shares (the scored batch, its masks and checks). Every other layer imports from
here; nothing here imports from them.
"""
