"""Reward oracles and the models they come with."""
