"""Where one BaNEL round's time goes for a small model: matrix products or
fixed overheads?

Runs BaNEL at ``BanelConfig()``'s defaults on one neural task of the
sparse-reward suite (default ``motif_tokens``: the running-sum sequence model,
4,864 parameters) with 3 seeds side by side in a ``BanelRunner`` that writes
its ledger and a checkpoint every round to a temporary run directory, and
times every round as the runner does it. The runner's own calls are wrapped
with timers (each waits for its result, which the runner does right after
anyway), so one round splits into:

* ``update``: the jitted, seed-vmapped BaNEL update (failure fit, region,
  distillation);
* ``evaluation``: ``runner.evaluate`` (``n_eval`` fresh samples per seed and
  their oracle calls, with their ledger writes);
* everything else (fixed overheads): the paid samples, the oracle on them (and
  its ledger write), the per-round diagnostics, the checkpoint, the metrics
  record and the Python around them.

The first round (compilation) is dropped; figures are medians over the other
rounds. After the rounds the update is also timed alone, on copies of the last
round's inputs, and so are its parts: the failure fit, the whole distillation,
and the rejection test of the distillation samples under either
``region_strategy`` (``"vmap"``, every slot; ``"loop"``, the filled ones).

Matrix products: XLA's ``cost_analysis()`` of the compiled update counts a
``while`` loop's body once, whatever its trip count (the update's fits are
loops: 20 epochs x 2 steps, 5 epochs x 16 steps), so its ``flops`` undercount
the work. The script therefore also counts the ``dot`` FLOPs of the compiled
program's HLO, each multiplied by the trip counts of the loops around it (XLA
records them as ``known_trip_count``), and divides them by the fp32 matrix
multiply throughput measured in the same process (jitted square ``jnp.dot``,
best size; measured before and after the rounds, the higher kept): the time
the update's matrix products would take at that peak, and its share of the
round. The same count is given for the other programs a round runs (the
samplers and the diagnostics).

On a shared machine absolute seconds are upper bounds; the shares within one
run are the figures to read.

  python research/profile_small_round.py                 # motif_tokens, 3 seeds
  python research/profile_small_round.py --rounds 4 --out profile.json  # quicker
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from research._common import command_line  # noqa: E402

# The suite's tasks whose model is a neural network (the others are a table
# of logits and a product of categoricals).
NEURAL_TASKS = ("motif_tokens", "addition_small", "stack_program", "brackets",
                "lattice_path", "smiles_like")
MAX_PARAMS = 100_000


# ---------------------------------------------------------------------------
# Timers around the runner's calls.


class Sections:
  """Inclusive seconds of named, possibly nested sections, per round."""

  def __init__(self):
    self.stack: list[str] = []
    self.rounds: list[dict] = []
    self.current: dict = {}

  def start_round(self):
    self.current = {}

  def end_round(self, seconds: float):
    self.current["round"] = seconds
    self.rounds.append(self.current)

  def wrap(self, name: str, fn, block: bool = True):
    """``fn`` timed as ``name`` (``parent/name`` inside another section),
    waiting for its result when ``block``."""
    import jax

    def timed(*args, **kwargs):
      path = "/".join(self.stack + [name])
      self.stack.append(name)
      t0 = time.perf_counter()
      try:
        out = fn(*args, **kwargs)
        if block:
          jax.block_until_ready(out)
        return out
      finally:
        self.current[path] = self.current.get(path, 0.0) + time.perf_counter() - t0
        self.stack.pop()

    return timed


def instrument(runner, sections: Sections) -> dict:
  """Wraps ``runner``'s per-round calls with ``sections``' timers; returns
  ``{"jitted": {name: the runner's unwrapped compiled function}}``, to which
  ``"update_args"`` (copies of the last update's inputs) is added as rounds run."""
  import jax
  import jax.numpy as jnp

  last = {"jitted": {"update": runner._update, "propose": runner._propose,
                     "prior_in_regions": runner._prior_in_regions,
                     "proposal_entropy": runner._proposal_entropy}}
  update = sections.wrap("update", runner._update)

  def update_keeping_inputs(states, batch, keys):
    # copies before the call (it donates the states), outside its timer
    last["update_args"] = jax.tree.map(jnp.copy, (states, batch, keys))
    return update(states, batch, keys)

  runner._update = update_keeping_inputs
  runner._propose = sections.wrap("sampling", runner._propose)
  runner.evaluate = sections.wrap("evaluation", runner.evaluate, block=False)
  runner.keeper.evaluate = sections.wrap("oracle_and_ledger", runner.keeper.evaluate)
  runner.keeper.evaluate_free = sections.wrap("oracle_and_ledger",
                                              runner.keeper.evaluate_free)
  for attr, name in (("_proposal_entropy", "diagnostic_entropy"),
                     ("_prior_in_regions", "diagnostic_prior_in_regions")):
    if getattr(runner, attr) is not None:
      setattr(runner, attr, sections.wrap(name, getattr(runner, attr)))
  runner._save = sections.wrap("checkpoint", runner._save, block=False)
  runner._emit = sections.wrap("metrics_record", runner._emit, block=False)
  return last


# ---------------------------------------------------------------------------
# Matrix-product FLOPs of a compiled program, loops counted.

_HEADER = re.compile(r"^(ENTRY )?%?([^\s(]+) \(.*\{\s*$")
_NAME = re.compile(r"^\s*(?:ROOT )?%?([^\s=]+) = ")
_ARRAY = re.compile(r" = [a-z]+[0-9]*\[([0-9,]*)\]")
_DOT = re.compile(r" dot\(([^)]*)\)")
_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([0-9,]*)\}")
_BODY = re.compile(r"\bbody=%?([^\s,}]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"([0-9]+)"\}')
_CALLED = re.compile(r"\b(?:calls|to_apply|true_computation|false_computation)"
                     r"=%?([^\s,}]+)")
_CALLED_SETS = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")


def _dims(text: str) -> list[int]:
  return [int(d) for d in text.split(",") if d]


def parse_hlo(text: str) -> tuple[str, dict]:
  """``(entry, {computation: {"dot_flops", "calls": [(callee, trip, loop)]}})``
  of an HLO module's text. ``loop`` marks a while body, ``trip`` its known
  trip count (``None`` when XLA does not know it; 1 for other calls); loop
  conditions are skipped."""
  comps, entry, name, shapes = {}, None, None, {}
  for line in text.splitlines():
    head = _HEADER.match(line)
    if head:
      name, shapes = head.group(2), {}
      comps[name] = {"dot_flops": 0.0, "calls": []}
      if head.group(1):
        entry = name
      continue
    if name is None or line.startswith("}"):
      continue
    m = _NAME.match(line)
    if not m:
      continue
    array = _ARRAY.match(line[m.end() - 3:])
    if array:
      shapes[m.group(1)] = _dims(array.group(1))
    dot = _DOT.search(line)
    if dot and array:
      lhs = re.findall(r"%([^\s,)]+)", dot.group(1))[0]
      contracting = _dims(_CONTRACTING.search(line).group(1))
      k = math.prod(shapes[lhs][i] for i in contracting)
      comps[name]["dot_flops"] += 2.0 * math.prod(shapes[m.group(1)]) * k
    body = _BODY.search(line)
    if body and " while(" in line:
      trip = _TRIP.search(line)
      comps[name]["calls"].append((body.group(1), int(trip.group(1)) if trip else None,
                                   True))
    for callee in _CALLED.findall(line):
      comps[name]["calls"].append((callee, 1, False))
    for group in _CALLED_SETS.findall(line):
      for callee in re.findall(r"%?([^\s,]+)", group):
        comps[name]["calls"].append((callee, 1, False))
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return entry, comps


def dot_flops(text: str) -> dict:
  """Matrix-product FLOPs of an HLO module: ``counted_once`` (every dot once,
  as XLA's cost analysis counts loop bodies), ``total`` (each dot times the
  trip counts of the loops around it), ``by_loop_nest`` (``total`` split by
  the trip counts of the enclosing loops, outermost first; ``"none"`` outside
  loops) and ``unknown_trip_counts`` (loops counted once for want of one; a
  conditional's branches are all counted, an upper bound)."""
  entry, comps = parse_hlo(text)
  out = {"counted_once": sum(c["dot_flops"] for c in comps.values()), "total": 0.0,
         "by_loop_nest": {}, "unknown_trip_counts": 0}

  def visit(comp: str, factor: float, nest: tuple):
    c = comps[comp]
    if c["dot_flops"]:
      key = " x ".join(map(str, nest)) or "none"
      out["by_loop_nest"][key] = out["by_loop_nest"].get(key, 0.0) + \
          factor * c["dot_flops"]
      out["total"] += factor * c["dot_flops"]
    for callee, trip, loop in c["calls"]:
      if callee not in comps:
        continue
      if not loop:
        visit(callee, factor, nest)
      elif trip is None:
        out["unknown_trip_counts"] += 1
        visit(callee, factor, nest + ("?",))
      else:
        visit(callee, factor * trip, nest + (trip,))

  visit(entry, 1.0, ())
  return out


def program_cost(jitted, *args) -> dict:
  """XLA's cost analysis and the loop-counted dot FLOPs of ``jitted(*args)``."""
  compiled = jitted.lower(*args).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0]
  return {"xla_cost_analysis_flops": float(cost.get("flops", float("nan"))),
          "xla_cost_analysis_transcendentals": float(cost.get("transcendentals",
                                                              float("nan"))),
          "dot_flops": dot_flops(compiled.as_text())}


def check_dot_counter() -> None:
  """The counter against known programs: one product, and ten in a scan."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((64, 64), jnp.float32)
  one = dot_flops(jax.jit(lambda a: a @ a).lower(a).compile().as_text())
  scan = dot_flops(jax.jit(lambda a: jax.lax.scan(
      lambda c, _: (c @ a, None), a, None, length=10)[0]).lower(a).compile().as_text())
  want = 2.0 * 64 ** 3
  if one["total"] != want or scan["total"] != 10 * want:
    raise RuntimeError(f"the dot counter is off: {one['total']} and {scan['total']} "
                       f"FLOPs, expected {want} and {10 * want}")


def update_parts(model, config, states, batch, keys, repeats: int) -> dict:
  """Median seconds of the update's parts, each jitted and vmapped over the
  seeds like the update, on the given (pre-update) round inputs: the failure
  fit, the whole distillation (its samples, the region test of them and the
  fit), and the region test of ``distill_samples`` prior samples alone, with
  either strategy (``"vmap"`` and ``"loop"``, timed in turns)."""
  import jax

  from banel_jax.core.distill import make_distiller
  from banel_jax.core.failure import make_failure_fitter, make_failure_tx
  from banel_jax.core.posterior import auto_region_strategy, rejection_mask
  from banel_jax.core.protocol import round_masks
  from banel_jax.experiments.bench import interleaved_times, median_time

  rank = len(model.event_shape)
  evaluated, success = jax.vmap(lambda b: round_masks(b, rank))(batch)
  failed = evaluated & ~success
  fit = jax.jit(jax.vmap(make_failure_fitter(model, config,
                                             tx=make_failure_tx(config))))
  distill = make_distiller(model, config)
  distill_all = jax.jit(jax.vmap(lambda s, k: distill(s.proposal, s.prior_params,
                                                      s.regions, k)))
  x = jax.jit(jax.vmap(lambda s, k: model.sample(s.prior_params, k,
                                                 config.distill_samples)))(states, keys)
  strategy = config.region_strategy
  chosen = auto_region_strategy(model, jax.tree.map(lambda a: a[0], states.regions),
                                x[0])
  run = lambda fn, *a: (lambda: jax.block_until_ready(fn(*a)))  # noqa: E731
  out = {"regions_filled": int(states.regions.size.reshape(-1)[0]),
         "region_slots": int(states.regions.valid.shape[-1]),
         "region_strategy": strategy, "auto_chooses": chosen,
         "failure_fit": median_time(
             run(fit, states.proposal.params, batch.x, failed, keys), repeats),
         "distillation": median_time(run(distill_all, states, keys), repeats),
         "region_test": {}}
  tests = {}
  for name in ("vmap", "loop"):
    mask = jax.jit(jax.vmap(lambda s, x, name=name: rejection_mask(
        model, s.regions, x, name)))
    tests[name] = run(mask, states, x)
    tests[name]()  # compiles
  # the two strategies in turns, so that the machine's slow spells hit both
  out["region_test"] = interleaved_times(tests, repeats, calls_per_turn=1)
  return out


# ---------------------------------------------------------------------------
# The run.


def median(values) -> float:
  return float(statistics.median(values))


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--task", default="motif_tokens", choices=NEURAL_TASKS,
                 help="a neural task of the sparse-reward suite")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--nre-budget", type=int, default=None,
                 help="NRE budget per seed (default: BanelConfig()'s); it sets "
                 "the number of rounds and of region slots")
  p.add_argument("--rounds", type=int, default=None,
                 help="rounds to run, the first (compiling) one dropped "
                 "(default: all of the budget's)")
  p.add_argument("--isolated-repeats", type=int, default=3,
                 help="timed calls of the update alone after the rounds")
  p.add_argument("--peak-repeats", type=int, default=5,
                 help="timed calls per size of the matmul-peak measurement")
  p.add_argument("--out", default=os.path.join(ROOT, "research",
                                               "profile_small_round.json"),
                 help="the JSON file to write (default: "
                 "research/profile_small_round.json)")
  args = p.parse_args(argv)

  import jax

  import banel_jax as bj
  from banel_jax.core.config import config_to_dict
  from banel_jax.experiments import common
  from banel_jax.experiments.bench import measure_matmul_peak
  from banel_jax.suite import get_task
  from banel_jax.suite.tasks import param_count

  task = get_task(args.task)
  setup = task.setup()
  n_params = param_count(setup.prior_params)
  if n_params >= MAX_PARAMS:
    raise SystemExit(f"{args.task}'s model has {n_params:,} parameters, not under "
                     f"{MAX_PARAMS:,}")
  config = bj.BanelConfig() if args.nre_budget is None else \
      bj.BanelConfig(nre_budget=args.nre_budget)
  rounds = config.num_rounds if args.rounds is None else args.rounds
  if not 2 <= rounds <= config.num_rounds:
    raise SystemExit(f"--rounds must be in [2, {config.num_rounds}] (the budget's "
                     "rounds; the first is dropped)")
  load_start = os.getloadavg()
  budget = "" if args.nre_budget is None else f" with nre_budget={args.nre_budget}"
  print(f"{args.task}: {n_params:,} parameters, seeds {args.seeds}, {rounds} rounds "
        f"of BanelConfig(){budget}", flush=True)
  check_dot_counter()
  print("fp32 matmul peak ...", flush=True)
  peak_before = measure_matmul_peak(args.peak_repeats)

  sections = Sections()
  with tempfile.TemporaryDirectory() as run_dir:
    runner = bj.BanelRunner(setup.model, setup.prior_params, setup.oracle, config,
                            seeds=args.seeds, progress=False, run_dir=run_dir,
                            keep_checkpoints=1)
    last = instrument(runner, sections)
    t0 = time.perf_counter()
    sections.start_round()
    runner.evaluate_start()
    start_s = time.perf_counter() - t0
    for t in range(rounds):
      sections.start_round()
      t0 = time.perf_counter()
      record = runner.step()
      sections.end_round(time.perf_counter() - t0)
      print(f"round {t + 1}: {sections.rounds[-1]['round']:.2f} s (update "
            f"{sections.rounds[-1].get('update', 0.0):.2f} s, evaluation "
            f"{sections.rounds[-1].get('evaluation', 0.0):.2f} s)", flush=True)

    # The update alone, on copies of the last round's inputs.
    states, batch, keys = last["update_args"]
    jitted = last["jitted"]
    isolated = []
    for _ in range(args.isolated_repeats):
      args_copy = jax.tree.map(lambda a: a.copy(), (states, batch, keys))
      t0 = time.perf_counter()
      jax.block_until_ready(jitted["update"](*args_copy))
      isolated.append(time.perf_counter() - t0)

    print("the update's parts ...", flush=True)
    parts = update_parts(runner.model, config, states, batch, keys,
                         args.isolated_repeats)

    # FLOPs of every program a round runs.
    print("compiling for the cost analysis ...", flush=True)
    x = jax.numpy.zeros((len(args.seeds), config.samples_per_round)
                        + tuple(setup.model.event_shape), setup.model.dtype)
    costs = {"update": program_cost(jitted["update"], states, batch, keys),
             "sampling_paid": program_cost(jitted["propose"], states, keys,
                                           config.samples_per_round),
             "sampling_evaluation": program_cost(jitted["propose"], states, keys,
                                                 config.n_eval)}
    if jitted["prior_in_regions"] is not None:
      costs["diagnostics_prior_in_regions"] = program_cost(
          jitted["prior_in_regions"], states, keys)
      costs["diagnostics_entropy"] = program_cost(
          jitted["proposal_entropy"], states, x, batch.log_norm)
    runner.close()
  peak_after = measure_matmul_peak(args.peak_repeats)
  load_end = os.getloadavg()

  peak = max(peak_before["peak_gflops"], peak_after["peak_gflops"]) * 1e9
  kept = sections.rounds[1:]
  names = sorted({k for r in kept for k in r if k != "round"})
  per_round = [{k: r.get(k, 0.0) for k in ["round"] + names} for r in kept]
  top = [k for k in names if "/" not in k]
  for r in per_round:
    r["everything_else"] = r["round"] - r.get("update", 0.0) - r.get("evaluation", 0.0)
    r["python_and_glue"] = r["round"] - sum(r[k] for k in top)
  split = {k: median([r[k] for r in per_round]) for k in per_round[0]}
  shares = {k: median([r[k] / r["round"] for r in per_round])
            for k in per_round[0] if k != "round"}
  matmul_s = {k: c["dot_flops"]["total"] / peak for k, c in costs.items()}
  all_matmul_s = sum(matmul_s.values())
  report = {
      "command": command_line("profile_small_round.py", argv),
      "task": args.task, "model_param_count": n_params,
      "model_event_shape": list(setup.model.event_shape),
      "seeds": args.seeds, "config": config_to_dict(config),
      "rounds_run": rounds, "rounds_kept": len(kept),
      "machine": common.machine(), "jax_version": jax.__version__,
      "load_average_1_5_15_min": {"start": list(load_start), "end": list(load_end)},
      "note": ("seconds on a shared machine are upper bounds; shares are medians of "
               "per-round shares, so they need not add up to 1"),
      "first_round_s": sections.rounds[0]["round"], "round_0_evaluation_s": start_s,
      "median_s": split, "median_share_of_round": shares,
      "update_alone_s": {"median": median(isolated), "calls": isolated},
      "update_parts_alone_s": parts,
      "per_round_s": per_round,
      "matmul_peak": {"before_rounds": peak_before, "after_rounds": peak_after,
                      "peak_gflops_used": peak / 1e9},
      "programs": costs,
      "matmul_at_peak_s": matmul_s,
      "update_xla_cost_analysis_flops_at_peak_s":
          costs["update"]["xla_cost_analysis_flops"] / peak,
      "update_matmul_at_peak_share_of_round": matmul_s["update"] / split["round"],
      "update_matmul_at_peak_share_of_update": matmul_s["update"] / split["update"],
      "all_programs_matmul_at_peak_share_of_round": all_matmul_s / split["round"],
      "last_record_success_rate": record.get("success_rate"),
  }
  path = common.write_json(args.out, report)

  rows = [("(a) round, as the runner runs it", split["round"], 1.0),
          ("(b) jitted update", split["update"], shares["update"]),
          ("(c) evaluation", split["evaluation"], shares["evaluation"]),
          ("(d) everything else", split["everything_else"], shares["everything_else"])]
  rows += [(f"    {k}", split[k], shares[k]) for k in top
           if k not in ("update", "evaluation")] + \
      [("    python and glue", split["python_and_glue"], shares["python_and_glue"])]
  rows += [(f"    (c) {k.split('/', 1)[1]}", split[k], shares[k])
           for k in names if k.startswith("evaluation/")]
  ca_s = costs["update"]["xla_cost_analysis_flops"] / peak
  rows += [("(e) update's matmuls at peak", matmul_s["update"],
            matmul_s["update"] / split["round"]),
           ("    its cost_analysis flops at peak", ca_s, ca_s / split["round"]),
           ("    all programs' matmuls at peak", all_matmul_s,
            all_matmul_s / split["round"])]
  print(f"\n{args.task} ({n_params:,} parameters), {len(args.seeds)} seeds, medians "
        f"of {len(kept)} rounds:")
  print(f"{'part':40s} {'seconds':>9s} {'share':>7s}")
  for label, s, share in rows:
    print(f"{label:40s} {s:9.3f} {share:7.1%}")
  u = costs["update"]
  print(f"update's parts alone ({parts['regions_filled']} of "
        f"{parts['region_slots']} region slots filled; strategy "
        f"{parts['region_strategy']} -> {parts['auto_chooses']}): failure fit "
        f"{parts['failure_fit']:.3f} s, distillation {parts['distillation']:.3f} s, "
        f"region test of the distillation samples alone "
        f"{parts['region_test'][parts['auto_chooses']]:.3f} s (the other strategy: "
        + ", ".join(
            f"{k} {v:.3f} s" for k, v in parts["region_test"].items()
            if k != parts["auto_chooses"]) + ")")
  print(f"update alone: {median(isolated):.3f} s; its dot FLOPs "
        f"{u['dot_flops']['total'] / 1e9:.2f} G (XLA cost_analysis, loops counted "
        f"once: {u['xla_cost_analysis_flops'] / 1e9:.2f} G); matmul peak "
        f"{peak / 1e9:.0f} GFLOP/s")
  print(f"wrote {path}")
  return report


if __name__ == "__main__":
  main()
