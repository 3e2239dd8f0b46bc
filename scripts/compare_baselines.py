"""BaNEL against the baselines: one table and one plot (SPEC section 6).

Every method runs in the same harness (:class:`banel_jax.BanelRunner`): the same
NRE budget, the same samples per round, the same evaluation (``n_eval`` fresh
samples per round, Clopper-Pearson intervals, counted apart from the NRE), seeds
side by side under ``vmap``. Methods: the pretrained model, BaNEL, REINFORCE,
RND, pseudo-counts, exact counts (toy only: the samples must be small integers),
unlikelihood, the exact-rejection reference (``BASELINES.md``), and
self-imitation (the one method that learns from the successes it finds).

Writes to ``--out`` (default ``results/baselines_<task>``):

* ``comparison.json``: configs, the pretrained rate, one row per method (final and
  best-so-far success rates with mean / median / std over seeds, improvement
  factors, wall time, malformed fraction of the scored samples where the task
  defines it, distinct samples per round), every method's per-round history;
* ``comparison.md``: the table (also printed);
* ``success_vs_nre.png``: success rate against NRE, mean over seeds with the
  min-max band;
* ``tuning.json`` (with ``--tune``): every grid point of every method.

With ``--run-dir DIR`` the comparison is resumable: each method runs in
``DIR/<method>`` (orbax checkpoints every round, ``config.json``, metrics and
the ledger of every oracle call; see the README's run-directory section), and
writes ``DIR/<method>/result.json`` when it finishes; the pretrained rate is kept
in ``DIR/pretrained.json`` and ``--tune``'s grid points run in
``DIR/tune/<method>_<i>``. Rerunning the same command after a kill loads the
finished methods (and grid points), resumes the one that was running from its
newest checkpoint, and asks the oracle nothing its ledger already holds. The
per-round diagnostics (distinct and malformed samples) are computed from the
round's samples, so a replayed round records the same ones.

Settings come from ``scripts/configs/baselines.py``, where the grid and the
settings it chose are recorded; ``--tune`` reruns the grid (6 configurations per
tuned method, on separate tuning seeds; the addition attack's grid runs on 2
seeds at NRE 2,500, about 2 hours here) and uses its picks.

Example:
  python scripts/compare_baselines.py --task toy1d              # ~10 minutes
  python scripts/compare_baselines.py --task toy1d --tune       # grid first
  python scripts/compare_baselines.py --task toy1d --tiny       # smoke test
  python scripts/compare_baselines.py --task toy1d --run-dir runs/baselines_toy1d
  python scripts/compare_baselines.py --task addition           # needs checkpoints
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from typing import Any, Callable, NamedTuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts._cli import command_line  # noqa: E402
from scripts.configs import baselines as configs  # noqa: E402

LABELS = {"pretrained": "pretrained", "banel": "BaNEL",
          "banel_support": "BaNEL + support check", "reinforce": "REINFORCE",
          "rnd": "RND", "pseudo_count": "pseudo-count", "exact_count": "exact-count",
          "unlikelihood": "unlikelihood", "exact_rejection": "exact rejection",
          "self_imitation": "self-imitation"}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--task", choices=["toy1d", "addition"], default="toy1d",
                 help="the task: the 1-D toy, or the addition attack (checkpoints).")
  p.add_argument("--methods", nargs="+", choices=configs.METHODS, default=None,
                 help="methods to run (default: all the task supports).")
  p.add_argument("--tune", action="store_true",
                 help="run the tuning grid first (tuning seeds) and use its picks.")
  p.add_argument("--tiny", action="store_true", help="seconds-long smoke variant.")
  p.add_argument("--seeds", type=int, default=None, help="number of seeds (0..S-1).")
  p.add_argument("--nre-budget", type=int, default=None, help="NRE per seed.")
  p.add_argument("--n-eval", type=int, default=None,
                 help="fresh samples per evaluation.")
  p.add_argument("--final-eval-samples", type=int, default=None,
                 help="addition only: fresh samples of the large final evaluation "
                 "of seeds whose final rate is below the threshold (default "
                 "200,000; 0 skips it).")
  p.add_argument("--out", default=None,
                 help="output folder (default results/baselines_<task>).")
  p.add_argument("--run-dir", default=None,
                 help="resumable comparison: every method runs in RUN_DIR/<method> "
                 "(checkpoints every round, the oracle ledger, metrics, and "
                 "result.json once finished), the pretrained rate is kept in "
                 "RUN_DIR/pretrained.json, --tune's grid points run in "
                 "RUN_DIR/tune/<method>_<i>; rerun the same command to resume after "
                 "a crash or kill: finished methods are loaded, the interrupted one "
                 "resumes, and no query in a ledger is asked again. (The large "
                 "final evaluation of the addition task is not ledgered: an "
                 "interrupted one is redone.)")
  p.add_argument("--no-progress", action="store_true", help="hide progress bars.")
  return p.parse_args(argv)


def build_experiment(args):
  exp = configs.get_tiny_config(args.task) if args.tiny else configs.CONFIGS[
      args.task]()
  run = exp.run
  if args.nre_budget is not None:
    run = run.replace(nre_budget=args.nre_budget)
  if args.n_eval is not None:
    run = run.replace(n_eval=args.n_eval)
  exp = exp.replace(run=run)
  if args.final_eval_samples is not None:
    if args.task != "addition" or args.final_eval_samples < 0:
      raise SystemExit("--final-eval-samples needs --task addition and a value >= 0")
    exp = exp.replace(final_eval_samples=args.final_eval_samples)
  if args.seeds is not None:
    if args.seeds < 1:
      raise SystemExit("--seeds must be >= 1")
    exp = exp.replace(seeds=tuple(range(args.seeds)))
  return exp


def apply_overrides(exp, overrides: dict):
  """``{"banel.filter_factor": 2.0, ...}`` -> a new experiment config."""
  for path, value in overrides.items():
    section, field = path.split(".")
    exp = exp.replace(**{section: dataclasses.replace(getattr(exp, section),
                                                      **{field: value})})
  return exp


# ---------------------------------------------------------------------------
# Tasks.


class TaskSetup(NamedTuple):
  """What the comparison needs from a task.

  Attributes:
    name: task name.
    model: the generator's family.
    prior_params: pretrained params.
    oracle: the reward oracle (host).
    featurize: RND's input featuriser.
    num_values: values per sample element (the exact-count table size for
      scalars).
    malformed: ``x -> bool[n]`` malformed samples, or ``None`` (not defined).
    exact_rate: ``state_of_one_seed -> float`` exact success rate, or ``None``.
    token_log_prob, token_mask: unlikelihood's token form (``None``: sequence).
    fast_prior_model: a model with the same prior distribution and a faster
      sampler for exact rejection's many candidates (or ``model``).
    methods: methods the task supports.
    prior_exact_rate: the pretrained model's exact success rate, or ``None``.
    support: a jit-able ``x -> bool[n]`` free validity check (``False`` where
      the reward is 0 whatever the oracle says), or ``None``; given to BaNEL in
      the ``banel_support`` method only.
  """

  name: str
  model: Any
  prior_params: Any
  oracle: Callable
  featurize: Callable
  num_values: int
  malformed: Callable | None
  exact_rate: Callable | None
  token_log_prob: Callable | None
  token_mask: Callable | None
  fast_prior_model: Any
  methods: tuple[str, ...]
  prior_exact_rate: float | None = None
  support: Callable | None = None


def toy_setup(exp) -> TaskSetup:
  import jax
  import jax.numpy as jnp

  from banel_jax.baselines import one_hot_features
  task = exp.task
  model = task.model()

  def fast_sample(params, key, n):
    # Inverse CDF: the same categorical, n uniforms instead of n * K Gumbels.
    cdf = jnp.cumsum(jax.nn.softmax(params["logits"]))
    u = jax.random.uniform(key, (n,)) * cdf[-1]
    return jnp.minimum(jnp.searchsorted(cdf, u, side="right"),
                       task.num_bins - 1).astype(jnp.int32)

  prior_logp = np.asarray(jax.nn.log_softmax(task.prior_logits()), np.float64)

  def exact_rate(state) -> float:
    if hasattr(state, "proposal"):  # BaNEL: the distilled proposal
      logits = state.proposal.params["logits"]
    elif hasattr(state, "policy"):
      logits = state.policy.params["logits"]
    elif hasattr(state, "failures"):  # exact rejection: prior minus seen failures
      p = np.exp(prior_logp)
      seen = np.asarray(state.failures.samples)[np.asarray(state.failures.valid)]
      p[seen] = 0.0
      return float(p[task.target_bins].sum() / p.sum())
    else:
      return float("nan")
    return task.exact_success_rate(np.asarray(jax.nn.log_softmax(logits)))

  return TaskSetup(
      name="toy1d", model=model, prior_params=task.prior_params(), oracle=task.oracle,
      featurize=one_hot_features(task.num_bins), num_values=task.num_bins,
      malformed=None, exact_rate=exact_rate, token_log_prob=None, token_mask=None,
      fast_prior_model=model._replace(sample=fast_sample),
      methods=tuple(m for m in configs.METHODS if m != "banel_support"),
      prior_exact_rate=task.exact_success_rate(prior_logp))


def addition_setup(exp) -> TaskSetup:
  import jax

  from banel_jax.baselines import one_hot_features, token_id_mask
  from banel_jax.models import transformer as tfm
  from banel_jax.tasks import addition

  for d in (exp.target_dir, exp.attacker_dir):
    if not os.path.isdir(d):
      raise SystemExit(f"no checkpoint at {d}: train it first (see scripts/attack.py)")
  # the target's width and input format come with its checkpoint
  target_params, task = addition.load_target_for(exp.target_dir, exp.task)
  attacker = tfm.make_transformer(task.attacker)
  attacker_params, _, _ = addition.load_attacker(exp.attacker_dir)

  def malformed(x):
    return ~addition.is_well_formed(np.asarray(x), task.max_operand_len,
                                    task.allow_leading_zeros)

  return TaskSetup(
      name="addition", model=attacker.model, prior_params=attacker_params,
      oracle=addition.make_oracle(target_params, task),
      featurize=one_hot_features(addition.VOCAB_SIZE),
      num_values=addition.VOCAB_SIZE, malformed=malformed, exact_rate=None,
      token_log_prob=attacker.token_log_prob, token_mask=token_id_mask(range(10)),
      fast_prior_model=attacker.model,
      methods=tuple(m for m in configs.METHODS if m != "exact_count"),
      support=addition.make_support(task))


SETUPS = {"toy1d": toy_setup, "addition": addition_setup}


# ---------------------------------------------------------------------------
# Methods and runs.


def build_method(name: str, setup: TaskSetup, exp):
  """``(method bundle or None for BaNEL, runner config)`` of one method."""
  from banel_jax import baselines as B
  run = exp.run
  model = setup.model
  if name in ("banel", "banel_support"):
    cfg = exp.banel.replace(nre_budget=run.nre_budget,
                            samples_per_round=run.samples_per_round,
                            n_eval=run.n_eval, eval_every=run.eval_every)
    if cfg.failure_batch_size > cfg.samples_per_round:
      cfg = cfg.replace(failure_batch_size=cfg.samples_per_round)
    if name == "banel":
      return None, cfg
    if setup.support is None:
      raise ValueError(f"task {setup.name!r} has no free support check")
    from banel_jax import make_banel
    return make_banel(model, cfg, support=setup.support), cfg
  if name == "reinforce":
    method = B.make_reinforce(model, exp.reinforce)
  elif name == "rnd":
    method = B.make_rnd(model, setup.featurize, exp.rnd, exp.rnd_bonus)
  elif name == "pseudo_count":
    method = B.make_pseudo_count(model, exp.pseudo_count, exp.pseudo_count_bonus)
  elif name == "exact_count":
    method = B.make_exact_count(model, setup.num_values, exp.exact_count)
  elif name == "unlikelihood":
    ul = exp.unlikelihood
    if ul.form == "token" and setup.token_log_prob is None:
      ul = ul.replace(form="sequence")
    method = B.make_unlikelihood(model, ul, token_log_prob=setup.token_log_prob,
                                 token_mask=setup.token_mask)
  elif name == "exact_rejection":
    method = B.make_exact_rejection(setup.fast_prior_model, exp.exact_rejection)
  elif name == "self_imitation":
    # no support check: like every baseline here, it is not given the grammar
    method = B.make_self_imitation(model, exp.self_imitation)
  else:
    raise ValueError(f"unknown method {name!r}")
  return method, run


def _distinct(x: np.ndarray) -> int:
  return int(len(np.unique(x.reshape(len(x), -1), axis=0))) if len(x) else 0


def _malformed_fraction(setup: TaskSetup, x: np.ndarray) -> float | None:
  return float(np.mean(setup.malformed(x))) if len(x) else None


def round_diagnostics(setup: TaskSetup, n_seeds: int) -> Callable:
  """An ``on_round`` hook adding per-round diagnostics of the samples.

  Computed from the round's samples (:attr:`BanelRunner.round_samples`), not by
  watching the oracle, so a round replayed from a run directory's ledger gets
  the same diagnostics as one the oracle answered:

  * ``n_distinct_train``: distinct samples among each seed's scored ones;
  * ``malformed_train``, ``malformed_eval``: malformed fraction of each seed's
    scored / evaluation samples (tasks that define malformed samples);
  * ``exact_success_rate``: each seed's exact rate (tasks that know it).

  Args:
    setup: the task.
    n_seeds: seeds run side by side.

  Returns:
    ``on_round(runner, record)``.
  """

  def on_round(runner, record: dict) -> None:
    import jax
    samples = runner.round_samples
    if "train" in samples:
      x, scored = samples["train"], samples["train_evaluated"]
      parts = [x[s][scored[s]] for s in range(n_seeds)]
      record["n_distinct_train"] = [_distinct(p) for p in parts]
      if setup.malformed is not None:
        record["malformed_train"] = [_malformed_fraction(setup, p) for p in parts]
    if "eval" in samples and setup.malformed is not None:
      record["malformed_eval"] = [_malformed_fraction(setup, p)
                                  for p in samples["eval"]]
    if setup.exact_rate is not None:
      states = runner.states
      record["exact_success_rate"] = [
          setup.exact_rate(jax.tree.map(lambda a, s=s: a[s], states))
          for s in range(n_seeds)]

  return on_round


# Config sections of the experiment that each method reads (recorded in its run
# directory and checked when it resumes).
METHOD_SECTIONS = {"banel": ("banel",), "banel_support": ("banel",),
                   "reinforce": ("reinforce",),
                   "rnd": ("rnd", "rnd_bonus"),
                   "pseudo_count": ("pseudo_count", "pseudo_count_bonus"),
                   "exact_count": ("exact_count",), "unlikelihood": ("unlikelihood",),
                   "exact_rejection": ("exact_rejection",),
                   "self_imitation": ("self_imitation",)}
RESULT_FILE = "result.json"


def run_settings(name: str, setup: TaskSetup, exp, seeds, cfg) -> dict:
  """JSON-ready description of one method's run (what its results depend on)."""
  out = {"method": name, "task": setup.name, "task_config": _jsonable(exp.task),
         "seeds": [int(s) for s in seeds], "run": _jsonable(cfg),
         "sections": {k: _jsonable(getattr(exp, k))
                      for k in METHOD_SECTIONS.get(name, ())},
         "final_eval_samples": getattr(exp, "final_eval_samples", 0),
         "final_eval_threshold": getattr(exp, "final_eval_threshold", None)}
  for field in ("target_dir", "attacker_dir"):
    if hasattr(exp, field):
      out[field] = getattr(exp, field)
  return out


def _write_json_atomic(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_jsonable(obj), f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _load_checked(path: str, settings: dict, what: str) -> Any:
  """``path``'s ``"result"`` if its ``"settings"`` equal ``settings``; else None
  when missing, and a :class:`RunDirError` naming the differences when not."""
  from banel_jax.run_dir import RunDirError, diff_records
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  problems = diff_records(saved["settings"], _jsonable(settings))
  if problems:
    raise RunDirError(f"{path} ({what}) was written with other settings; differing "
                      f"fields: {'; '.join(problems)}. Use a new --run-dir, or the "
                      "original settings to resume.")
  return saved["result"]


def run_method(name: str, setup: TaskSetup, exp, seeds, progress: bool,
               final_eval_only: bool = False, run_dir: str | None = None) -> dict:
  """Runs one method for ``seeds`` side by side; returns its history and timings.

  Args:
    name: the method (a key of ``LABELS``).
    setup: the task.
    exp: the experiment config.
    seeds: seeds run side by side.
    progress: show a progress bar.
    final_eval_only: evaluate only the pretrained and the final model (tuning).
    run_dir: optional run directory of this method: the run checkpoints every
      round and ledgers every oracle call there, and ``result.json`` is written
      when it finishes. A directory holding a finished run returns its result
      without running anything; one holding an unfinished run resumes it.

  Raises:
    RunDirError: ``run_dir`` holds a run of other settings.
  """
  from banel_jax import BanelRunner
  method, cfg = build_method(name, setup, exp)
  if final_eval_only:
    rounds = -(-cfg.nre_budget // cfg.samples_per_round)
    cfg = dataclasses.replace(cfg, eval_every=rounds + 1)
  settings = run_settings(name, setup, exp, seeds, cfg)
  result_path = None if run_dir is None else os.path.join(run_dir, RESULT_FILE)
  if result_path is not None:
    done = _load_checked(result_path, settings, f"{LABELS[name]}'s result")
    if done is not None:
      return {**done, "loaded_from": result_path}
  t0 = time.perf_counter()
  runner = BanelRunner(setup.model, setup.prior_params, setup.oracle, cfg, seeds,
                       method=method, progress=progress,
                       on_round=round_diagnostics(setup, len(seeds)),
                       run_dir=run_dir,
                       extra_config=None if run_dir is None else {
                           "comparison": settings})
  t_open = time.perf_counter()
  try:
    result = runner.run()
    large = None
    n_large = getattr(exp, "final_eval_samples", 0)
    if n_large and min(result.final_success_rates()) < exp.final_eval_threshold:
      large = large_evaluation(runner, setup, n_large, cfg.n_eval)
  finally:
    runner.close()
  # the run's own wall time (summed over resumed processes) and this opening
  wall = result.wall_time_s + (t_open - t0)
  out = {"history": result.history, "wall_time_s": wall, "final_large_eval": large,
         "nre_spent": result.nre_spent, "eval_calls": result.eval_calls,
         "n_successes_found_in_training": len(result.successes),
         "final_success_rate": result.final_success_rates(),
         "best_success_rate": result.best_success_rates()}
  if result_path is not None:
    _write_json_atomic(result_path, {"settings": settings, "result": out})
  return out


def large_evaluation(runner, setup: TaskSetup, n: int, chunk: int) -> list[dict]:
  """Final success rate of every seed on ``n`` fresh samples (rates below 1e-3
  need >= 200,000 for a useful interval; BASELINES.md). Counted apart from NRE."""
  import jax

  from banel_jax.metrics import clopper_pearson
  propose = jax.jit(jax.vmap(runner.banel.propose, in_axes=(0, 0, None)),
                    static_argnums=2)
  seeds = runner.seeds
  roots = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(20_000), s))(
      np.asarray(seeds, np.uint32))
  hits = np.zeros(len(seeds), np.int64)
  total = 0
  for i in range(-(-n // chunk)):
    keys = jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(roots)
    x = np.asarray(propose(runner.states, keys, chunk)[0])
    r = np.asarray(setup.oracle(x.reshape((-1,) + x.shape[2:]))).reshape(len(seeds),
                                                                        chunk)
    hits += r.sum(axis=1).astype(np.int64)
    total += chunk
  return [clopper_pearson(int(h), total).as_dict() for h in hits]


def measure_pretrained(setup: TaskSetup, n: int, m: int, seed: int = 10_000) -> dict:
  """The pretrained model's success rate on ``n`` fresh samples (+ exact, toy)."""
  import jax

  from banel_jax.metrics import clopper_pearson
  sample = jax.jit(setup.model.sample, static_argnums=2)
  key = jax.random.key(seed)
  chunk = min(n, 8192)
  xs = [np.asarray(sample(setup.prior_params, jax.random.fold_in(key, i), chunk))
        for i in range(-(-n // chunk))]
  x = np.concatenate(xs)[:n]
  r = np.asarray(setup.oracle(x))
  est = clopper_pearson(int(r.sum()), n)
  out = {"estimate": est.as_dict(), "rate": est.rate}
  if setup.malformed is not None:
    out["malformed"] = float(np.mean(setup.malformed(x)))
  # Distinct samples in batches of m (what a round of the prior would score).
  rounds = x[: (min(n, 100 * m) // m) * m].reshape((-1, m) + x.shape[1:])
  distinct = [len(np.unique(b.reshape(m, -1), axis=0)) for b in rounds]
  out["distinct_per_round"] = float(np.mean(distinct)) if distinct else None
  if setup.prior_exact_rate is not None:
    out["exact_rate"] = setup.prior_exact_rate
  return out


PRETRAINED_FILE = "pretrained.json"


def pretrained_rate(setup: TaskSetup, exp, run_dir: str | None = None) -> dict:
  """:func:`measure_pretrained` at the experiment's settings; with ``run_dir``,
  measured once and kept in ``run_dir/pretrained.json`` (a rerun loads it)."""
  settings = {"task": setup.name, "task_config": _jsonable(exp.task),
              "samples": exp.pretrained_samples, "m": exp.run.samples_per_round}
  for field in ("target_dir", "attacker_dir"):
    if hasattr(exp, field):
      settings[field] = getattr(exp, field)
  path = None if run_dir is None else os.path.join(run_dir, PRETRAINED_FILE)
  if path is not None:
    done = _load_checked(path, settings, "the pretrained rate")
    if done is not None:
      return done
  out = measure_pretrained(setup, exp.pretrained_samples, exp.run.samples_per_round)
  if path is not None:
    _write_json_atomic(path, {"settings": settings, "result": out})
  return out


# ---------------------------------------------------------------------------
# Tuning.


def grid_points(axes) -> list[dict]:
  names = [a for a, _ in axes]
  return [dict(zip(names, vals)) for vals in itertools.product(*[v for _, v in axes])]


def tune(setup: TaskSetup, exp, methods, progress: bool,
         run_dir: str | None = None) -> tuple[Any, dict]:
  """Runs every method's grid on the tuning seeds; returns the picks applied.

  The grid runs at ``exp.tuning_run`` where the config sets one (the addition
  attack tunes at a smaller budget than it reports), without the large final
  evaluation (picks use the ``n_eval`` rate); the picks are applied to ``exp``
  itself. With ``run_dir``, grid point ``i`` of a method runs (resumably) in
  ``run_dir/tune/<method>_<i>``.
  """
  tune_exp = exp.replace(run=exp.tuning_run or exp.run, final_eval_samples=0)
  record = {"seeds": list(exp.tuning_seeds), "criterion": "mean final success rate",
            "run": _jsonable(tune_exp.run), "methods": {}}
  chosen = exp
  for name, axes in exp.grid:
    if name not in methods:
      continue
    points = []
    for i, overrides in enumerate(grid_points(axes)):
      point_dir = (None if run_dir is None
                   else os.path.join(run_dir, "tune", f"{name}_{i}"))
      res = run_method(name, setup, apply_overrides(tune_exp, overrides),
                       exp.tuning_seeds,
                       progress, final_eval_only=True, run_dir=point_dir)
      final = res["final_success_rate"]
      points.append({"overrides": overrides, "final_success_rate": final,
                     "mean": float(np.mean(final)), "wall_time_s": res["wall_time_s"]})
      print(f"  tune {LABELS[name]:15s} {overrides} -> {np.mean(final):.4f} "
            f"({res['wall_time_s']:.0f}s"
            + ("; finished earlier, loaded)" if "loaded_from" in res else ")"),
            flush=True)
    best = max(points, key=lambda p: p["mean"])
    record["methods"][name] = {"grid": [[a, list(v)] for a, v in axes],
                               "points": points, "chosen": best["overrides"]}
    chosen = apply_overrides(chosen, best["overrides"])
  return chosen, record


# ---------------------------------------------------------------------------
# Table and plot.


def _settings(name: str, exp) -> dict:
  if name not in METHOD_SECTIONS:
    return {}
  section = METHOD_SECTIONS[name][0]  # the method's own config section
  fields = dict(exp.grid).get(section, ())  # banel_support: BaNEL's knobs
  cfg = getattr(exp, section)
  out = {a.split(".")[1]: getattr(cfg, a.split(".")[1]) for a, _ in fields}
  if section == "banel" and cfg.tau_mode == "calibrated":
    # the filter factor is unused in calibrated mode: show what sets tau instead
    out.pop("filter_factor", None)
    out = {"tau_mode": "calibrated",
           "calibrated_reject_fraction": cfg.calibrated_reject_fraction, **out}
  return out


def summarize_run(name: str, run: dict, pretrained: dict, exp) -> dict:
  from banel_jax.metrics import summarize_over_seeds
  hist = run["history"]
  final = np.asarray(run["final_success_rate"])
  best = np.asarray(run["best_success_rate"])
  # No success among the pretrained samples: 1 / trials bounds the rate (as
  # scripts/attack.py does), so improvements are then lower bounds.
  rate0 = max(pretrained["rate"], 1.0 / pretrained["estimate"]["trials"])
  distinct = [h["n_distinct_train"] for h in hist if "n_distinct_train" in h]
  row = {
      "method": LABELS[name], "key": name, "settings": _settings(name, exp),
      "final": summarize_over_seeds(final), "best": summarize_over_seeds(best),
      "final_per_seed": final.tolist(),
      "improvement_final_mean": float(final.mean() / rate0),
      "improvement_best_mean": float(best.mean() / rate0),
      "wall_time_s": run["wall_time_s"],
      "nre_spent": run["nre_spent"], "eval_calls": run["eval_calls"],
      "n_successes_found_in_training": run["n_successes_found_in_training"],
      "distinct_per_round_mean": float(np.mean(distinct)) if distinct else None,
      "distinct_per_round_last": float(np.mean(distinct[-1])) if distinct else None,
  }
  if run.get("final_large_eval"):
    large = np.asarray([e["rate"] for e in run["final_large_eval"]])
    row["final_large_eval"] = {"per_seed": run["final_large_eval"],
                               "summary": summarize_over_seeds(large),
                               "improvement_mean": float(large.mean() / rate0)}
  mal = [h["malformed_train"] for h in hist if "malformed_train" in h]
  row["malformed_train"] = float(np.mean(mal)) if mal else None
  exact = [h["exact_success_rate"] for h in hist if "exact_success_rate" in h]
  if exact:
    row["final_exact"] = summarize_over_seeds(exact[-1])
  return row


def _fmt(v, digits=4):
  if v is None:
    return "n/a"
  if isinstance(v, float):
    return f"{v:.{digits}f}"
  return str(v)


def markdown_table(rows: list[dict], pretrained: dict, exp, task: str) -> str:
  run = exp.run
  has_exact = any("final_exact" in r for r in rows)
  has_large = any("final_large_eval" in r for r in rows)
  head = ["method", "final mean", "median", "std", "best mean", "improvement"]
  if has_exact:
    head.append("exact final mean")
  if has_large:
    head.append(f"final mean ({getattr(exp, 'final_eval_samples', 0)} samples)")
  head += ["malformed", "distinct / round (mean, last)", "wall (s)", "settings"]
  lines = [f"{task}: NRE budget {run.nre_budget}, m = {run.samples_per_round}, "
           f"n_eval = {run.n_eval}, {len(exp.seeds)} seeds (vmap); success rates "
           "on fresh samples; improvement = final mean / pretrained rate"
           + (" (a lower bound: no pretrained success seen)"
              if pretrained["estimate"]["successes"] == 0 else "") + ".", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  pre = pretrained["rate"]
  pre_row = ["pretrained", _fmt(pre), "-", "-", "-", "1.0x"]
  if has_exact:
    pre_row.append(_fmt(pretrained.get("exact_rate")))
  if has_large:
    pre_row.append(_fmt(pre, 6))
  d = pretrained.get("distinct_per_round")
  pre_row += [_fmt(pretrained.get("malformed"), 3),
              f"{d:.1f}" if d is not None else "-", "-",
              f"{pretrained['estimate']['trials']} samples"]
  lines.append("| " + " | ".join(pre_row) + " |")
  for r in rows:
    cells = [r["method"], _fmt(r["final"]["mean"]), _fmt(r["final"]["median"]),
             _fmt(r["final"]["std"]), _fmt(r["best"]["mean"]),
             f"{r['improvement_final_mean']:.1f}x"]
    if has_exact:
      cells.append(_fmt(r["final_exact"]["mean"]) if "final_exact" in r else "n/a")
    if has_large:
      cells.append(_fmt(r["final_large_eval"]["summary"]["mean"], 6)
                   if "final_large_eval" in r else "-")
    d_mean, d_last = r["distinct_per_round_mean"], r["distinct_per_round_last"]
    cells += [_fmt(r["malformed_train"], 3),
              f"{d_mean:.1f}, {d_last:.1f}" if d_mean is not None else "n/a",
              f"{r['wall_time_s']:.0f}",
              ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "-"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(runs: dict, pretrained: dict, path: str, title: str):
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, (name, run) in enumerate(runs.items()):
    recs = [h for h in run["history"] if "success_rate" in h]
    nre = np.array([np.mean(h["nre"]) for h in recs], float)
    rate = np.array([h["success_rate"] for h in recs], float)
    c = colors[i % len(colors)]
    ax.plot(nre, rate.mean(axis=1), marker=".", color=c, label=LABELS[name])
    ax.fill_between(nre, rate.min(axis=1), rate.max(axis=1), color=c, alpha=0.12)
  ax.axhline(pretrained["rate"], color="k", ls=":", lw=1, label="pretrained")
  ax.set_yscale("log")
  ax.set_xlabel("reward evaluations spent on learning (NRE)")
  ax.set_ylabel("success rate (mean over seeds; band: min-max)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def _jsonable(v):
  if dataclasses.is_dataclass(v) and not isinstance(v, type):
    from banel_jax.checkpoint import recorded_fields
    return {name: _jsonable(x) for name, x in recorded_fields(v)}
  if isinstance(v, dict):
    return {str(k): _jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  if isinstance(v, (np.generic,)):
    return v.item()
  if isinstance(v, (int, float, str, bool)) or v is None:
    return v
  return str(v)


def main(argv=None):
  args = parse_args(argv)
  import matplotlib
  matplotlib.use("Agg")
  exp = build_experiment(args)
  out = args.out or os.path.join("results", f"baselines_{args.task}")
  os.makedirs(out, exist_ok=True)
  setup = SETUPS[args.task](exp)
  unsupported = [m for m in (args.methods or ()) if m not in setup.methods]
  if unsupported:
    raise SystemExit(f"--task {args.task} does not support {unsupported} (it "
                     f"supports {list(setup.methods)})")
  methods = [m for m in (args.methods or configs.METHODS) if m in setup.methods]
  progress = not args.no_progress
  t_start = time.perf_counter()

  if args.run_dir is not None:
    os.makedirs(args.run_dir, exist_ok=True)

  tuning = None
  if args.tune:
    print(f"tuning on seeds {list(exp.tuning_seeds)} ...", flush=True)
    exp, tuning = tune(setup, exp, methods, progress, args.run_dir)
    tuning = {"command": command_line("compare_baselines.py", argv), **tuning}
    with open(os.path.join(out, "tuning.json"), "w") as f:
      json.dump(_jsonable(tuning), f, indent=1)

  pretrained = pretrained_rate(setup, exp, args.run_dir)
  print(f"pretrained: {pretrained['rate']:.4g} on {exp.pretrained_samples} samples",
        flush=True)
  runs, rows = {}, []
  for name in methods:
    if name == "pretrained":
      continue
    print(f"running {LABELS[name]} ...", flush=True)
    method_dir = None if args.run_dir is None else os.path.join(args.run_dir, name)
    runs[name] = run_method(name, setup, exp, exp.seeds, progress, run_dir=method_dir)
    rows.append(summarize_run(name, runs[name], pretrained, exp))
    loaded = runs[name].get("loaded_from")
    print(f"  final {np.round(runs[name]['final_success_rate'], 4).tolist()} "
          f"({runs[name]['wall_time_s']:.0f}s)"
          + (f"; finished earlier, loaded from {loaded}" if loaded else ""),
          flush=True)

  table = markdown_table(rows, pretrained, exp, args.task)
  summary = {"command": command_line("compare_baselines.py", argv),
             "task": args.task, "config": _jsonable(exp), "methods": methods,
             "pretrained": pretrained, "rows": rows,
             "tuning": tuning if tuning is not None else "see scripts/configs/"
             "baselines.py (settings chosen by the grid there)",
             "total_wall_time_s": time.perf_counter() - t_start,
             "runs": {k: {"history": v["history"]} for k, v in runs.items()}}
  with open(os.path.join(out, "comparison.json"), "w") as f:
    json.dump(_jsonable(summary), f, indent=1)
  with open(os.path.join(out, "comparison.md"), "w") as f:
    f.write(table + "\n")
  plot(runs, pretrained, os.path.join(out, "success_vs_nre.png"),
       f"{args.task}: success rate vs NRE (same budget, m, evaluation)")
  print(table)
  print(f"wrote {out}/")


if __name__ == "__main__":
  main()
