"""Generative models that satisfy :class:`banel_jax.types.GenerativeModel`."""
