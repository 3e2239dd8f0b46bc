"""BaNEL attack on the digit-addition transformer (SPEC 5.2; the paper's table).

An attacker transformer, pretrained to write addition queries, learns from its
failures alone to write queries that the target transformer answers wrongly, under
a hard budget of reward evaluations (NRE). Seeds run side by side under ``vmap``.

Writes to ``--out``:

* ``attack.json``: config; the pretrained attacker's rate (``--pretrained-samples``
  queries, Clopper-Pearson interval); per seed the final and best-so-far success
  rates and improvement factors, with mean / median / std over seeds; wall time;
  examples of successful attacks; what BaNEL learned (leading zeros, carry chains,
  operand lengths, against the pretrained attacker); rule-based attacks built from
  those patterns, with their success rates;
* ``metrics.jsonl``: one record per round;
* ``success_vs_nre.png``.

Needs the target and attacker checkpoints (``scripts/train_target.py``,
``scripts/pretrain_attacker.py``); ``--train-missing`` trains small ones first.

Example:
  python scripts/attack.py --config quick          # README main job, minutes
  python scripts/attack.py --config full           # NRE 7,500, 5 seeds
  python scripts/attack.py --config full --no-leading-zeros --failure-epochs 20
  python scripts/attack.py --config full --method self-imitation --support-filter

``--method self-imitation`` runs the self-imitation baseline
(:func:`banel_jax.baselines.make_self_imitation`) in the same harness instead of
BaNEL: no failure model, no regions; it fits the latest ``--success-bank K``
successes (default 256), each weighing ``--success-weight W`` (default 100),
beside ``--distill-samples`` fresh samples of itself, with BaNEL's distillation
epochs, batch size and learning rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts._cli import command_line  # noqa: E402
from scripts.configs import attack as attack_configs  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", choices=sorted(attack_configs.CONFIGS), default="quick",
                 help="preset: 'full' (NRE 7,500, 5 seeds), 'quick' (README main "
                 "job), 'tiny' (tests). Options below override it.")
  p.add_argument("--seeds", type=int, default=None, help="number of seeds (0..S-1).")
  p.add_argument("--seed-offset", type=int, default=0,
                 help="first seed (seeds are offset..offset+S-1).")
  p.add_argument("--nre-budget", type=int, default=None,
                 help="reward evaluations spent on learning, per seed.")
  p.add_argument("--samples-per-round", type=int, default=None,
                 help="queries scored per round (m).")
  p.add_argument("--method", choices=["banel", "self-imitation"], default="banel",
                 help="banel (default), or the self-imitation baseline: fit the "
                 "successes found so far, upweighted, with no failure model "
                 "(BaNEL-only options are then refused).")
  p.add_argument("--mode", choices=["distilled", "exact"], default=None,
                 help="BaNEL variant (distilled = Algorithm 2).")
  p.add_argument("--tau-mode", choices=["factor", "calibrated"], default=None,
                 help="region threshold: filter factor f, or calibrated to reject "
                 "a fraction of fresh proposal samples.")
  p.add_argument("--filter-factor", type=float, default=None,
                 help="reject x when the failure model finds it f times likelier.")
  p.add_argument("--reject-fraction", type=float, default=None,
                 help="target rejection rate of --tau-mode calibrated.")
  p.add_argument("--min-acceptance-rate", type=float, default=None,
                 help="floor on the rejection regions' acceptance rate (default "
                 "1e-4); below it the run stops with AcceptanceRateError rather "
                 "than distil from almost nothing. 0 turns the check off.")
  p.add_argument("--failure-epochs", type=int, default=None,
                 help="failure-model epochs per round (the compute knob).")
  p.add_argument("--failure-init", choices=["proposal", "scratch"], default=None,
                 help="warm-start the failure model from the proposal or not.")
  p.add_argument("--failure-lr", type=float, default=None,
                 help="failure-model Adam learning rate.")
  p.add_argument("--distill-samples", type=int, default=None,
                 help="free proposal samples drawn per distillation.")
  p.add_argument("--distill-epochs", type=int, default=None,
                 help="epochs of distillation per round.")
  p.add_argument("--distill-lr", type=float, default=None,
                 help="distillation Adam learning rate.")
  p.add_argument("--reset", action="store_true",
                 help="restart distillation from the pretrained params each round.")
  p.add_argument("--distill-pack", action="store_true",
                 help="put accepted samples first in each distillation epoch: full "
                 "minibatches of accepted samples and ceil(accepted / batch) steps "
                 "per epoch, instead of samples/batch steps on whatever was accepted.")
  p.add_argument("--distill-target", choices=["proposal", "posterior", "mixture"],
                 default=None,
                 help="what distillation fits: 'proposal' = the current proposal "
                 "outside the regions (paper); 'posterior' = the exploration "
                 "posterior p_theta_0 * 1[not in R] through importance weights "
                 "p_theta_0/p_theta; 'mixture' = the same target from half "
                 "pretrained, half proposal samples with bounded balance-heuristic "
                 "weights (stops the drift into malformed queries).")
  p.add_argument("--support-filter", action="store_true",
                 help="give BaNEL the query grammar as a free validity check: "
                 "distillation treats malformed queries (reward 0 whatever the "
                 "target says, no evaluation needed) as rejected, so the proposal "
                 "cannot drift into them.")
  p.add_argument("--reject-seen-failures", action="store_true",
                 help="distillation also rejects every query already paid for and "
                 "failed (exact match; the target answers deterministically), so "
                 "the proposal cannot settle on a known failure that the "
                 "likelihood-ratio regions miss because it draws it often.")
  p.add_argument("--learn-from-successes", action="store_true",
                 help="not the paper's algorithm: the round's successful queries "
                 "join the distillation set (weight 1 each), so the proposal also "
                 "learns from the few successes it finds. By default they are only "
                 "recorded and reported.")
  p.add_argument("--success-bank", type=int, default=None, metavar="K",
                 help="implies --learn-from-successes: every distillation fits the "
                 "latest K successes found in training (a ring buffer kept in the "
                 "run's state), not only the round's own. With --method "
                 "self-imitation: the bank's size (default 256).")
  p.add_argument("--distinct-bank", action="store_true",
                 help="with --success-bank: a success already in the bank is not "
                 "added again, so the bank keeps K distinct queries (by default a "
                 "query found ten times fills ten slots).")
  p.add_argument("--success-weight", type=float, default=None, metavar="W",
                 help="with --learn-from-successes or --success-bank: each success "
                 "weighs W in distillation's weighted likelihood, where every "
                 "accepted sample weighs 1 (default 1). Upweighting lets a few "
                 "successes count against thousands of accepted samples, e.g. "
                 "replay without regions (--tau-mode factor --filter-factor 1e30). "
                 "With --method self-imitation: default 100.")
  p.add_argument("--restart-after-rounds", type=int, default=None, metavar="R",
                 help="not the paper's algorithm: a seed whose training has scored "
                 "no success after R rounds restarts its search (the proposal "
                 "becomes the pretrained attacker again and every region is "
                 "dropped), and again every R rounds until it finds one; never "
                 "after. Default 0: never.")
  p.add_argument("--train-microbatch", type=int, default=None, metavar="M",
                 help="a speed setting: every failure-model and distillation step "
                 "accumulates its gradient over microbatches of at most M samples "
                 "(the same step up to float rounding; faster on a CPU). Default: "
                 "the config's, 32 in every attack config since session 26 (5 seeds "
                 "at NRE 4,000: 508 s against 650 s before session 26); 0 is one "
                 "pass per step, as the runs before session 26. With --method "
                 "self-imitation it sets the fit's microbatches the same way "
                 "(before session 27 self-imitation always fitted in one pass: "
                 "give 0 to resume such a run).")
  p.add_argument("--proposal-filter", action="store_true",
                 help="draw every paid, calibration and evaluation sample from the "
                 "proposal restricted to outside the regions (and the grammar with "
                 "--support-filter), by rejection: no evaluation is spent on a query "
                 "the regions already reject. Costs 2 log-prob passes per region "
                 "per candidate and more candidates as acceptance falls (practical "
                 "on an accelerator; slow on a CPU).")
  p.add_argument("--no-leading-zeros", action="store_true",
                 help="the harder variant: operands with leading zeros are malformed.")
  p.add_argument("--n-eval", type=int, default=None,
                 help="fresh samples per success-rate evaluation.")
  p.add_argument("--eval-every", type=int, default=None,
                 help="evaluate every this many rounds (and after the last).")
  p.add_argument("--pretrained-samples", type=int, default=None,
                 help="samples for the pretrained attacker's rate (>= 200,000 for a "
                 "tight interval near 1e-4).")
  p.add_argument("--calibration", default="results/addition_calibration.json",
                 help="reuse the pretrained rate measured by scripts/calibrate_attack.py "
                 "(200,704 samples) when this JSON was made from the same "
                 "checkpoints (same directories and training steps); pass '' to "
                 "always measure it here.")
  p.add_argument("--target-dir", default=None, help="target checkpoint directory.")
  p.add_argument("--attacker-dir", default=None,
                 help="pretrained attacker checkpoint directory.")
  p.add_argument("--train-missing", action="store_true",
                 help="train the target / attacker with their scripts' defaults if "
                 "a checkpoint is missing.")
  p.add_argument("--out", default=None,
                 help="output folder (default results/attack_<config>).")
  p.add_argument("--run-dir", default=None,
                 help="resumable run directory (orbax checkpoints every round, the "
                 "oracle ledger, metrics); rerun the same command to resume after "
                 "a crash or kill without re-asking any paid-for query.")
  p.add_argument("--no-analysis", action="store_true",
                 help="skip the pattern analysis and the rule-based attacks.")
  p.add_argument("--no-progress", action="store_true", help="hide progress bars.")
  p.add_argument("--host-devices", default="auto",
                 help="on a CPU, make this many JAX CPU devices so that the "
                 "runner splits the seeds over them (banel_jax.sharding: as many "
                 "devices as divide the seeds evenly, each running its own seeds "
                 "as one program; the cores are shared among them); 1 keeps every "
                 "seed on one device, in one program batched over the seeds, "
                 "with all cores behind each operation. Default 'auto': one "
                 "device per seed. On 2 cores (session 29, one run each): the "
                 "README's 2-seed quick run took 103 s on 2 devices against 126 "
                 "s on one; 5 seeds of the full config took 139 s on 5 devices "
                 "against 181 s on one at NRE 1,000, 243 s against 278 s at "
                 "NRE 2,000. A run directory records "
                 "the number of devices its seeds ran on when more than 1, and "
                 "resumes only on as many. Ignored on a GPU or TPU.")
  args = p.parse_args(argv)
  if args.host_devices != "auto":
    given = args.host_devices
    try:
      args.host_devices = int(given)
    except ValueError:
      args.host_devices = 0
    if args.host_devices < 1:
      p.error(f"--host-devices must be 'auto' or an integer >= 1, got {given!r}")
  return args


def build_experiment(args) -> attack_configs.AttackExperiment:
  exp = attack_configs.CONFIGS[args.config]()
  b = {k: v for k, v in {
      "nre_budget": args.nre_budget, "samples_per_round": args.samples_per_round,
      "mode": args.mode, "tau_mode": args.tau_mode,
      "filter_factor": args.filter_factor,
      "calibrated_reject_fraction": args.reject_fraction,
      "min_acceptance_rate": args.min_acceptance_rate,
      "failure_epochs": args.failure_epochs, "failure_init": args.failure_init,
      "failure_learning_rate": args.failure_lr,
      "distill_samples": args.distill_samples, "distill_epochs": args.distill_epochs,
      "distill_learning_rate": args.distill_lr, "n_eval": args.n_eval,
      "distill_target": args.distill_target,
      "restart_after_rounds": args.restart_after_rounds,
      "train_microbatch": args.train_microbatch,
      "eval_every": args.eval_every}.items() if v is not None}
  if args.reset:
    b["distill_reset"] = True
  if args.distill_pack:
    b["distill_pack"] = True
  if args.proposal_filter:
    b["proposal_filter"] = True
  if args.reject_seen_failures:
    b["reject_seen_failures"] = True
  if args.learn_from_successes or args.success_bank:
    b["learn_from_successes"] = True
  if args.success_bank is not None:
    b["success_bank_size"] = args.success_bank
  if args.distinct_bank and args.method == "banel":
    if not args.success_bank:
      raise SystemExit("--distinct-bank needs --success-bank K (K >= 1)")
    b["success_bank_distinct"] = True
  if args.success_weight is not None and args.method == "banel":
    if not (args.learn_from_successes or args.success_bank):
      raise SystemExit("--success-weight needs --learn-from-successes or "
                       "--success-bank K")
    b["success_weight"] = args.success_weight
  banel = exp.banel.replace(**b)
  if banel.failure_batch_size > banel.samples_per_round:
    banel = banel.replace(failure_batch_size=banel.samples_per_round)
  exp = exp.replace(banel=banel)
  if args.no_leading_zeros:
    exp = exp.replace(task=exp.task.replace(allow_leading_zeros=False))
  if args.support_filter:
    exp = exp.replace(support_filter=True)
  n_seeds = args.seeds if args.seeds is not None else len(exp.seeds)
  if n_seeds < 1:
    raise SystemExit("--seeds must be >= 1")
  exp = exp.replace(seeds=tuple(range(args.seed_offset, args.seed_offset + n_seeds)))
  for name in ("target_dir", "attacker_dir", "pretrained_samples"):
    if getattr(args, name) is not None:
      exp = exp.replace(**{name: getattr(args, name)})
  return exp


# argparse dests of the options that only BaNEL reads, and their flags
_BANEL_ONLY = {"mode": "--mode", "tau_mode": "--tau-mode",
               "filter_factor": "--filter-factor", "reject_fraction": "--reject-fraction",
               "min_acceptance_rate": "--min-acceptance-rate",
               "failure_epochs": "--failure-epochs", "failure_init": "--failure-init",
               "failure_lr": "--failure-lr", "reset": "--reset",
               "distill_target": "--distill-target",
               "reject_seen_failures": "--reject-seen-failures",
               "proposal_filter": "--proposal-filter",
               "restart_after_rounds": "--restart-after-rounds"}
SELF_IMITATION_BANK, SELF_IMITATION_WEIGHT = 256, 100.0


def self_imitation_configs(args, exp):
  """``(SelfImitationConfig, RunConfig)`` of ``--method self-imitation``.

  The fit takes BaNEL's distillation settings of ``exp`` (samples, epochs, batch
  size, learning rate, packing) and its ``train_microbatch``; the run takes its
  budget and evaluation.
  """
  from banel_jax.baselines import RunConfig, SelfImitationConfig
  given = [flag for dest, flag in _BANEL_ONLY.items()
           if getattr(args, dest) not in (None, False)]
  if given:
    raise SystemExit(f"--method self-imitation has no failure model or regions: "
                     f"drop {', '.join(given)}")
  if args.learn_from_successes:
    raise SystemExit("--method self-imitation always fits its successes (set "
                     "how many with --success-bank K): drop --learn-from-successes")
  b = exp.banel
  try:
    si = SelfImitationConfig(
        bank_size=(SELF_IMITATION_BANK if args.success_bank is None
                   else args.success_bank),
        success_weight=(SELF_IMITATION_WEIGHT if args.success_weight is None
                        else args.success_weight),
        bank_distinct=args.distinct_bank, anchor_samples=b.distill_samples,
        epochs=b.distill_epochs, batch_size=b.distill_batch_size,
        learning_rate=b.distill_learning_rate, pack=b.distill_pack,
        train_microbatch=b.train_microbatch)
  except ValueError as e:  # names the field; --success-bank K is bank_size
    raise SystemExit(f"--method self-imitation: {e}") from None
  run = RunConfig(nre_budget=b.nre_budget, samples_per_round=b.samples_per_round,
                  n_eval=b.n_eval, eval_every=b.eval_every)
  return si, run


def ensure_checkpoints(exp, train_missing: bool):
  for directory, script in ((exp.target_dir, "train_target.py"),
                            (exp.attacker_dir, "pretrain_attacker.py")):
    if os.path.isdir(directory):
      continue
    if not train_missing:
      raise SystemExit(
          f"no checkpoint at {directory}: run `python scripts/{script} --out "
          f"{directory}` first, or pass --train-missing")
    print(f"training missing checkpoint {directory} with scripts/{script} ...",
          flush=True)
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), "--out",
                    directory], check=True)


def load_models(exp):
  from banel_jax.models import transformer as tfm
  from banel_jax.tasks import addition

  # the target's width and input format come with its checkpoint
  target_params, task = addition.load_target_for(exp.target_dir, exp.task)
  attacker_params, _, _ = addition.load_attacker(exp.attacker_dir)
  exp = exp.replace(task=task)
  return exp, tfm.make_transformer(exp.task.attacker), attacker_params, target_params


def reuse_calibration(path, exp):
  """The pretrained rate from a calibration JSON made from the same checkpoints."""
  from banel_jax import checkpoint
  from banel_jax.metrics import RateEstimate
  if not path or not os.path.exists(path):
    return None
  with open(path) as f:
    cal = json.load(f)
  try:
    same = all(
        os.path.abspath(cal[k]["path"]) == os.path.abspath(d)
        and cal[k]["steps"] == checkpoint.load_metadata(d).get("steps")
        for k, d in (("target", exp.target_dir), ("attacker", exp.attacker_dir)))
    variant = ("leading_zeros_allowed" if exp.task.allow_leading_zeros
               else "leading_zeros_disallowed")
    rate = cal[variant]["success"]
  except (KeyError, TypeError):
    return None
  if not same:
    return None
  return RateEstimate(**{k: rate[k] for k in ("successes", "trials", "rate", "low",
                                              "high")})


def sample_in_chunks(sample_fn, params, key, n, chunk=8192):
  import jax
  out = []
  for i, start in enumerate(range(0, n, chunk)):
    out.append(np.asarray(sample_fn(params, jax.random.fold_in(key, i), chunk)))
  return np.concatenate(out)[:n]


def paid_sample_diagnostics(task, n_seeds: int):
  """An ``on_round`` hook recording, per seed, the malformed share, the
  both-operands-long share and the shares of the target's weak slices
  (top-sum-13, carry into the top, tops 4/5, carry propagation >= 3) of the round's scored samples (from
  ``BanelRunner.round_samples``, so a replayed round records the same)."""
  from banel_jax.tasks import addition
  from banel_jax.tasks import addition_patterns as patterns

  def on_round(runner, record):
    samples = runner.round_samples
    if "train" not in samples:
      return
    x, scored = samples["train"], samples["train_evaluated"]
    parts = [x[s][scored[s]] for s in range(n_seeds)]
    record["malformed_train"] = [
        float(1.0 - addition.is_well_formed(p, task.max_operand_len,
                                            task.allow_leading_zeros).mean())
        if len(p) else None for p in parts]
    record["both_long_train"] = [patterns.both_long_share(p, task) for p in parts]
    record["top_sum_13_train"] = [patterns.top_sum_13_share(p, task) for p in parts]
    record["carry_into_top_train"] = [patterns.carry_into_top_share(p, task)
                                      for p in parts]
    record["tops_45_train"] = [patterns.tops_45_share(p, task) for p in parts]
    record["propagation_3_train"] = [patterns.propagation_share(p, task)
                                     for p in parts]

  return on_round


def _method_label(c) -> str:
  """The plot's name for the method: BaNEL, or what it was run with besides.

  A fixed filter factor of 1e30 or more is named "no regions": a region would
  reject only samples the failure model finds 1e30 times likelier than the
  proposal does (the ablation of `results/README.md`, sessions 22-23).
  """
  if c.tau_mode == "factor" and c.filter_factor >= 1e30:
    label = "no regions"
  else:
    label = "BaNEL"
  if c.success_bank_size:
    label += f" + bank {c.success_bank_size}"
  elif c.learn_from_successes:
    label += " + round's successes"
  if c.learn_from_successes and c.success_weight != 1.0:
    label += f" (weight {c.success_weight:g})"
  return label


def _self_imitation_label(c) -> str:
  return f"self-imitation, bank {c.bank_size} (weight {c.success_weight:g})"


def main(argv=None):
  args = parse_args(argv)
  import matplotlib
  matplotlib.use("Agg")
  import jax

  from banel_jax import BanelRunner, plotting
  from banel_jax.metrics import clopper_pearson, summarize_over_seeds
  from banel_jax.tasks import addition
  from banel_jax.tasks import addition_patterns as patterns

  exp = build_experiment(args)
  # before anything touches a device: the CPU backend is made with this many
  jax.config.update("jax_num_cpu_devices", len(exp.seeds) if args.host_devices
                    == "auto" else args.host_devices)
  # the baseline's config first: a refused option fails before any work
  si_config, run_config = (self_imitation_configs(args, exp)
                           if args.method == "self-imitation" else (None, exp.banel))
  out = args.out or os.path.join("results", f"attack_{args.config}")
  os.makedirs(out, exist_ok=True)
  ensure_checkpoints(exp, args.train_missing)
  exp, attacker, attacker_params, target_params = load_models(exp)
  task = exp.task
  scorer = addition.make_scorer(target_params, task)
  oracle = addition.make_oracle(target_params, task)
  model = attacker.model
  sample = jax.jit(model.sample, static_argnums=2)
  root = jax.random.key(10_000 + exp.seeds[0])
  pre_key, analysis_key, rule_seed = jax.random.split(root, 3)

  # 1. The pretrained attacker's rate, measured once on many samples.
  t0 = time.perf_counter()
  pre = reuse_calibration(args.calibration, exp)
  n_pre = exp.analysis_samples if pre is not None else max(exp.pretrained_samples,
                                                            exp.analysis_samples)
  x_pre = sample_in_chunks(sample, attacker_params, pre_key, n_pre)
  r_pre = oracle(x_pre)
  source = f"from {args.calibration}"
  if pre is None:
    pre = clopper_pearson(int(r_pre.sum()), len(r_pre))
    source = "measured here"
  print(f"pretrained attacker: {pre.successes}/{pre.trials} = {pre.rate:.2e} "
        f"[{pre.low:.2e}, {pre.high:.2e}] ({source}, {time.perf_counter() - t0:.0f}s)",
        flush=True)

  # 2. The method (BaNEL or the baseline), seeds side by side.
  metrics_path = os.path.join(out, "metrics.jsonl")
  if os.path.exists(metrics_path):
    os.remove(metrics_path)
  from banel_jax.checkpoint import config_to_dict
  method = None
  support = addition.make_support(task) if exp.support_filter else None
  if si_config is not None:
    from banel_jax.baselines import make_self_imitation
    method = make_self_imitation(model, si_config, support=support)
  elif exp.support_filter:
    from banel_jax import make_banel
    method = make_banel(model, exp.banel, support=support)
  from banel_jax.sharding import seed_mesh
  mesh = seed_mesh(len(exp.seeds))
  seed_devices = 1 if mesh is None else mesh.devices.size
  print(f"seeds {list(exp.seeds)} on {seed_devices} device(s) of "
        f"{jax.device_count()} ({jax.default_backend()})", flush=True)
  from banel_jax import RunDirError
  try:
    runner = BanelRunner(
        model, attacker_params, oracle, run_config, exp.seeds,
        metrics_path=metrics_path, progress=not args.no_progress,
        run_dir=args.run_dir, method=method,
        on_round=paid_sample_diagnostics(task, len(exp.seeds)),
        extra_config={"task": config_to_dict(task),
                      "target_dir": exp.target_dir,
                      "attacker_dir": exp.attacker_dir,
                      # only when on: older run directories resume
                      **({"support_filter": True} if exp.support_filter else {}),
                      # the seeds' programs differ in float rounding with the
                      # split: resume alike
                      **({"seed_devices": seed_devices} if seed_devices > 1 else {})})
  except RunDirError as e:
    if "seed_devices" not in str(e):
      raise
    raise SystemExit(f"attack.py: {e}\nThat run's seeds ran on another number of "
                     "CPU devices: pass --host-devices with the number it "
                     "recorded in extra.seed_devices (1 where it has none).") from e
  result = runner.run()
  final = np.array(result.final_success_rates())
  best = np.array(result.best_success_rates())
  rate0 = max(pre.rate, 1.0 / pre.trials)  # avoid /0 when no success was seen
  summary = {
      "command": command_line("attack.py", argv),
      "task": "addition_attack", "config_name": args.config,
      "task_config": _jsonable(dataclasses.asdict(task)),
      "method": args.method,
      # BaNEL's config, or None for the baseline (its config is method_config)
      "banel_config": dataclasses.asdict(exp.banel) if si_config is None else None,
      **({"method_config": dataclasses.asdict(si_config),
          "run_config": dataclasses.asdict(run_config)} if si_config else {}),
      "seeds": list(exp.seeds),
      "support_filter": exp.support_filter,
      "pretrained": pre.as_dict(), "pretrained_source": source,
      "pretrained_rate_is_lower_bound": pre.successes == 0,
      "final_success_rate": final.tolist(), "best_success_rate": best.tolist(),
      "final": summarize_over_seeds(final), "best": summarize_over_seeds(best),
      "improvement_final": (final / rate0).tolist(),
      "improvement_best": (best / rate0).tolist(),
      "improvement_final_mean": float(final.mean() / rate0),
      "improvement_best_mean": float(best.mean() / rate0),
      "improvement_final_median": float(np.median(final) / rate0),
      "nre_spent": result.nre_spent, "eval_calls": result.eval_calls,
      "n_successes_found_in_training": len(result.successes),
      "wall_time_s": result.wall_time_s,  # summed over resumed processes
      "seed_devices": seed_devices,
      "examples_found_in_training": sorted({addition.decode(s.sample)
                                            for s in result.successes})[:40],
  }

  # 3. What the method learned, against the pretrained attacker.
  if not args.no_analysis:
    n = exp.analysis_samples
    pre_rows = x_pre[:n]
    summary["patterns_pretrained"] = patterns.pattern_summary(
        pre_rows, task, r_pre[:n])
    propose = jax.jit(jax.vmap(runner.banel.propose, in_axes=(0, 0, None)),
                      static_argnums=2)
    keys = jax.random.split(analysis_key, len(exp.seeds))
    x_post, _ = propose(runner.states, keys, n)
    x_post = np.asarray(x_post)
    per_seed = []
    for s in range(len(exp.seeds)):
      r = oracle(x_post[s])
      per_seed.append(patterns.pattern_summary(x_post[s], task, r))
      if s == 0:
        wins = x_post[s][r > 0.5]
        summary["examples_final_proposal_seed0"] = addition.decode_batch(wins[:30])
    # patterns_banel_per_seed or patterns_self_imitation_per_seed
    summary[f"patterns_{args.method.replace('-', '_')}_per_seed"] = per_seed
    rng = np.random.default_rng(int(jax.random.randint(rule_seed, (), 0, 2**31 - 1)))
    rules = {}
    for rule in patterns.RULES:
      q = patterns.rule_based_queries(rng, exp.rule_samples, rule, task)
      r = oracle(q)
      rules[rule] = clopper_pearson(int(r.sum()), len(r)).as_dict()
    summary["rule_based_attacks"] = rules

  with open(os.path.join(out, "attack.json"), "w") as f:
    json.dump(summary, f, indent=1)
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  label = (_self_imitation_label(si_config) if si_config else
           _method_label(exp.banel))
  plotting.plot_success_vs_nre({label: result.history}, ax,
                               log_y=True,
                               title="addition attack: success rate vs NRE")
  ax.axhline(pre.rate, color="k", ls=":", lw=1, label="pretrained")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, "success_vs_nre.png"), dpi=110)

  print(f"final success per seed: {np.round(final, 4).tolist()} | mean "
        f"{final.mean():.4f} median {np.median(final):.4f} std {final.std():.4f} | "
        f"improvement (mean) {summary['improvement_final_mean']:.1f}x; best-so-far "
        f"mean {best.mean():.4f} ({summary['improvement_best_mean']:.1f}x) | "
        f"{result.wall_time_s:.0f}s")
  if "rule_based_attacks" in summary:
    print("rule-based:", {k: round(v["rate"], 4) for k, v in
                          summary["rule_based_attacks"].items()})
  print(f"wrote {out}/")


def _jsonable(d):
  if isinstance(d, dict):
    return {k: _jsonable(v) for k, v in d.items()}
  if isinstance(d, (list, tuple)):
    return [_jsonable(v) for v in d]
  if isinstance(d, (int, float, str, bool)) or d is None:
    return d
  return str(d)


if __name__ == "__main__":
  main()
