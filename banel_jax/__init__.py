"""banel_jax: Bayesian Negative Evidence Learning in JAX.

Post-train a likelihood-based generative model from failures only, under a hard
budget of reward evaluations. See the README for a tour.
"""

from banel_jax.banel import (Banel, BanelState, RestartClock, RoundBatch, make_banel,
                             round_keys)
from banel_jax.budget import BudgetKeeper, OracleError, OraclePolicy, validate_rewards
from banel_jax.checkpoint import CheckpointError, load_metadata, load_params, save_params
from banel_jax.config import BanelConfig, ConfigError
from banel_jax.distill import make_distiller
from banel_jax.driver import BanelRunner, NonFiniteError, RunResult, run_banel
from banel_jax.failure import make_failure_fitter
from banel_jax.ledger import LedgerError, ReplayMismatchError, read_ledger
from banel_jax.metrics import RateEstimate, clopper_pearson, summarize_over_seeds
from banel_jax.mle import fit_weighted_mle, weighted_nll
from banel_jax.posterior import (AcceptanceRateError, PosteriorSampleInfo, RegionBank,
                                 add_region, calibrate_log_tau, check_acceptance,
                                 empty_region_bank, log_posterior_unnormalized,
                                 log_ratio, log_tau_from_filter_factor,
                                 region_log_ratios, rejection_mask,
                                 sample_posterior_by_rejection)
from banel_jax.run_dir import (CheckpointWarning, RunDirError, RunDirectory,
                               read_checkpoint)
from banel_jax.types import GenerativeModel, SplitLogProb

__version__ = "0.1.0"
