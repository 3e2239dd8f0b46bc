"""Experiment configs: each module exposes ``get_config()`` and a tiny variant."""
