"""BaNEL, the paper's algorithm, solves the 1-D toy from failures only.

The toy (:class:`banel_jax.tasks.toy1d.Toy1DTask`, 61 bins of a discretised
N(0, 1), rewarded at -2 and +2) has a pretrained success rate of 0.01082 (exact).
Within 1,000 reward evaluations (NRE) BaNEL must raise it to at least 0.9 on
every seed (0-4, side by side), in both modes: distilled (Algorithm 2) and
exact (Algorithm 1, the exploration posterior sampled by rejection).

Settings: ``BanelConfig`` defaults except ``nre_budget=1000`` and
``filter_factor=1.032``, with evaluations of 2,000 samples after rounds 0 and
10 only (``n_eval=2000, eval_every=10``: evaluation never touches the run).
No extension: the algorithm learns from failures alone.

Why the filter factor: with an ideal failure model a failure's likelihood
ratio is only ``1 / (1 - p_success)``, about 1.01 here, so the default factor
of 2 rejects almost nothing. Measured on seeds 0-4 (NRE 1,000, every default
else, rates on fresh samples): with ``filter_factor=2`` the final rates were
0.0096-0.0189 (distilled) and 0.0136-0.0210 (exact); with 1.032 every seed
ended at 1.0 in both modes, all seeds at 0.9 or more from 600 NRE on in
distilled mode (lowest 0.93) and from 800 NRE on in exact mode (at 700 NRE the
lowest was 0.79). The final rate is also checked exactly: the distilled
proposal's mass on the targets, and the exploration posterior's in exact mode.
"""

import jax
import numpy as np
import pytest

from banel_jax import BanelConfig, BanelRunner
from banel_jax.tasks import toy1d

SEEDS = (0, 1, 2, 3, 4)


@pytest.mark.parametrize("mode", ["distilled", "exact"])
def test_banel_raises_the_toys_success_rate_to_0_9_on_every_seed(mode):
  task = toy1d.Toy1DTask()
  prior = task.exact_success_rate(np.asarray(jax.nn.log_softmax(task.prior_logits())))
  assert prior == pytest.approx(0.01082, abs=1e-5)
  # the paper's algorithm (the defaults trade this peak for not collapsing)
  config = BanelConfig.paper(mode=mode, nre_budget=1000, filter_factor=1.032,
                             n_eval=2000, eval_every=10)
  result = BanelRunner(task.model(), task.prior_params(), task.oracle, config,
                       seeds=SEEDS, progress=False).run()
  assert result.nre_spent == [1000] * len(SEEDS)
  final = result.final_success_rates()
  assert min(final) >= 0.9, final
  exact = []
  for s in range(len(SEEDS)):
    one = jax.tree.map(lambda a, s=s: a[s], result.states)
    pmf = toy1d.distributions(task, one)["proposal" if mode == "distilled"
                                         else "posterior"]
    exact.append(float(pmf[task.target_bins].sum()))
  assert min(exact) >= 0.9, exact
