"""banel_jax: Bayesian Negative Evidence Learning in JAX.

Post-train a likelihood-based generative model from failures only, under a hard
budget of reward evaluations. The package is layered, with imports pointing
into the core:

* :mod:`banel_jax.core`: the paper's algorithm as pure functions;
* :mod:`banel_jax.extensions`: plug-ins beyond the paper (opt-in);
* :mod:`banel_jax.baselines`: other methods with the same round protocol;
* :mod:`banel_jax.runtime`: the driver, budget, ledger, run directories, devices;
* :mod:`banel_jax.models`, :mod:`banel_jax.tasks`: generators and tasks;
* :mod:`banel_jax.experiments`: the paper's experiments, run by ``banel``.

The names below are the public API.
"""

from banel_jax.core.banel import Banel, BanelState, make_banel
from banel_jax.core.config import BanelConfig, ConfigError
from banel_jax.core.distill import make_distiller
from banel_jax.core.extension import Extension, RoundOutcome
from banel_jax.core.failure import make_failure_fitter
from banel_jax.core.metrics import RateEstimate, clopper_pearson, summarize_over_seeds
from banel_jax.core.mle import fit_weighted_mle, weighted_nll
from banel_jax.core.posterior import (AcceptanceRateError, PosteriorSampleInfo,
                                      RegionBank, add_region, calibrate_log_tau,
                                      check_acceptance, empty_region_bank,
                                      log_posterior_unnormalized, log_ratio,
                                      log_tau_from_filter_factor, region_log_ratios,
                                      rejection_mask, sample_posterior_by_rejection)
from banel_jax.core.protocol import RoundBatch, round_keys, round_masks
from banel_jax.core.types import GenerativeModel, SplitLogProb
from banel_jax.runtime.budget import (BudgetKeeper, OracleError, OraclePolicy,
                                      validate_rewards)
from banel_jax.runtime.checkpoint import (CheckpointError, load_metadata, load_params,
                                          save_params)
from banel_jax.runtime.driver import BanelRunner, NonFiniteError, RunResult, run_banel
from banel_jax.runtime.ledger import LedgerError, ReplayMismatchError, read_ledger
from banel_jax.runtime.run_dir import (CheckpointWarning, RunDirError, RunDirectory,
                                       read_checkpoint)

__version__ = "0.2.0"

__all__ = [
    "AcceptanceRateError",
    "Banel",
    "BanelConfig",
    "BanelRunner",
    "BanelState",
    "BudgetKeeper",
    "CheckpointError",
    "CheckpointWarning",
    "ConfigError",
    "Extension",
    "GenerativeModel",
    "LedgerError",
    "NonFiniteError",
    "OracleError",
    "OraclePolicy",
    "PosteriorSampleInfo",
    "RateEstimate",
    "RegionBank",
    "ReplayMismatchError",
    "RoundBatch",
    "RoundOutcome",
    "RunDirError",
    "RunDirectory",
    "RunResult",
    "SplitLogProb",
    "add_region",
    "calibrate_log_tau",
    "check_acceptance",
    "clopper_pearson",
    "empty_region_bank",
    "fit_weighted_mle",
    "load_metadata",
    "load_params",
    "log_posterior_unnormalized",
    "log_ratio",
    "log_tau_from_filter_factor",
    "make_banel",
    "make_distiller",
    "make_failure_fitter",
    "read_checkpoint",
    "read_ledger",
    "region_log_ratios",
    "rejection_mask",
    "round_keys",
    "round_masks",
    "run_banel",
    "sample_posterior_by_rejection",
    "save_params",
    "summarize_over_seeds",
    "validate_rewards",
    "weighted_nll",
]

