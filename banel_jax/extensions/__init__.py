"""Additions to the paper's algorithm, each a small config and a plug-in passed
to :func:`~banel_jax.core.banel.make_banel` (and to the runner) as
``extensions=(...)``. None is on unless asked for.

* :func:`support_check`: a free validity check (task knowledge).
* :func:`seen_failures`: reject every sample already paid for and failed.
* :func:`success_replay`: successes join distillation (learns from successes).
* :func:`restart`: restart a seed that has found nothing (reads successes).

Write your own as a :class:`~banel_jax.core.extension.Extension`.
"""

from banel_jax.core.extension import Extension, RoundOutcome, describe
from banel_jax.extensions.restart import RestartClock, RestartConfig, restart
from banel_jax.extensions.seen_failures import SeenFailuresConfig, seen_failures
from banel_jax.extensions.success_replay import SuccessReplayConfig, success_replay
from banel_jax.extensions.support_check import SupportCheckConfig, support_check

__all__ = [
    "Extension",
    "RestartClock",
    "RestartConfig",
    "RoundOutcome",
    "SeenFailuresConfig",
    "SuccessReplayConfig",
    "SupportCheckConfig",
    "describe",
    "restart",
    "seen_failures",
    "success_replay",
    "support_check",
]
