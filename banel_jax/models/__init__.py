"""Generative models that satisfy :class:`banel_jax.core.types.GenerativeModel`."""
