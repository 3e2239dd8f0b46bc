"""Benchmarks: the transformer's throughput, a round's parts, the speed settings.

``--which`` picks the benchmark; each writes ``bench_<which>.json`` to ``--out``
and prints its numbers.

``transformer``: throughput of the Transformer bundle for the attacker shape
(and with ``--transformer.include-target`` the addition target's) at several
batch sizes: sampling tokens/s (temperature 1, KV cache, one ``lax.scan`` under
``jit``), exact log-likelihood sequences/s (``log_prob``, scored in chunks on a
CPU), and training steps/s of maximum likelihood (one AdamW step of
:func:`banel_jax.core.mle.fit_weighted_mle` over the batch, its gradient
accumulated over microbatches of ``--transformer.train-microbatch``
sequences). It counts XLA compilations across repeated calls to show that
nothing re-traces per step or per round. On a CPU each batch is split over
``--transformer.host-devices`` CPU devices (one per core by default), and the
run also times JAX on one device. With ``--transformer.peer`` it measures, in
the same process and on the same threads, a randomly initialised Hugging Face
GPT-2 of the same shape on PyTorch (``pip install -e ".[bench]"``; dropout 0
like ours, eval mode for sampling and scoring): the ratios come from a
side-by-side pass, the JAX call and the peer's call of each comparison timed in
turns, so that the machine's slow spells fall on both alike, printed as a
Markdown table. It also writes a roofline: the machine's measured fp32
matrix-multiply peak, the matmul FLOPs each measurement needs (the least any
implementation of the same math must do), the GFLOP/s each side reached and
the GFLOP/s a target ratio would need against the peer; a target whose need
exceeds the peak cannot be met on that machine in fp32.

``round``: where the time of one distilled BaNEL round of the addition attack
goes, at the shapes of an attack preset (``--round.attack-preset``), every
part jitted and ``vmap``-ed over ``--round.seeds`` seeds as the attack runs
them: the paid samples, the oracle, the failure model's epochs, the
calibration samples and their log-ratio, the distillation samples, one
region's rejection test of them, and distillation's epochs. The two fits are
timed at each of ``--round.train-microbatches``. The JSON also gives the
estimated round time with 1 region and an upper bound with as many regions as
the budget's last round has; and the whole rejection test on a synthetic bank
of ``--round.region-bank`` regions, against the same loop made to score every
sample at every region (both masks must agree). The parameters are freshly
initialised: the cost depends on the shapes only.

``microbatch``: side-by-side timings of the training-step speed settings, each
comparison timing two variants of the same jitted call in turns, at the
attack's shapes, one seed: ``split_log_prob`` (a training step with the
attacker's ``log_prob`` a ``SplitLogProb``, its input tables computed once per
step, against the same function computing them in every microbatch),
``reinforce`` and ``unlikelihood`` (one update with ``train_microbatch`` at
``--microbatch.microbatch`` against 0). Both variants compute the same thing
up to float rounding; the JSON gives each one's median seconds and the
speed-up.

Presets: ``default`` (the committed measurements' settings) and ``tiny``
(seconds, for tests).

Examples:
  banel bench --which transformer --transformer.peer
  banel bench --which round --round.seeds 1 --round.train-microbatches 0 16 32
  banel bench --which microbatch --out results
  banel bench --preset tiny --which round
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import platform
import statistics
import time
from typing import Literal, get_args

from banel_jax.core.config import CPU_TRAIN_MICROBATCH
from banel_jax.experiments import common
from banel_jax.experiments.registry import (Command, ExperimentError, invocation,
                                            register)

BENCHMARKS = ("transformer", "round", "microbatch")
Comparison = Literal["split_log_prob", "reinforce", "unlikelihood"]
COMPARISONS: tuple[str, ...] = get_args(Comparison)
# The ratios the transformer benchmark sets against the peer.
TARGET_RATIOS = {"sample_tokens_per_s": 3.0, "log_prob_sequences_per_s": 5.0,
                 "train_steps_per_s": 2.0}


def _positive_ints(owner: str, **values) -> None:
  for name, v in values.items():
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ExperimentError(f"{owner}.{name}={v!r} must be an integer >= 1")


def _int_tuple(owner: str, name: str, values, low: int) -> None:
  if not isinstance(values, tuple) or not values or not all(
      isinstance(v, int) and not isinstance(v, bool) and v >= low for v in values):
    raise ExperimentError(f"{owner}.{name}={values!r} must be a non-empty tuple of "
                          f"integers >= {low}")


@dataclasses.dataclass(frozen=True)
class TransformerBench:
  """The transformer's throughput.

  Attributes:
    batch_sizes: batch sizes to measure.
    repeats: timed calls per measurement after one warm-up; the median is
      reported.
    threads: CPU threads for PyTorch (XLA uses every core of the machine).
    host_devices: on a CPU, JAX splits each batch over this many CPU devices,
      each sampling, scoring and training on its own rows
      (:mod:`banel_jax.runtime.data_parallel`); ``auto``: one per core. With
      more than 1 the run also times JAX on one device with every core behind
      it. Only applied before JAX starts in the process, and not when
      ``XLA_FLAGS`` sets the device count; ignored on a GPU or TPU.
    train_microbatch: the training step accumulates its gradient over
      microbatches of at most this many sequences of each device's share
      (``auto``: 32 on a CPU, where each microbatch is then scored in one pass,
      and one pass on an accelerator); 0 computes it in one pass.
    peer: also measure Hugging Face GPT-2 on PyTorch (needs the ``bench``
      extra) at the peer's batches, side by side with JAX.
    peer_sample_batch: batch of the sampling comparison (one of
      ``batch_sizes``).
    peer_score_batch: batch of the log-likelihood comparison (one of
      ``batch_sizes``).
    peer_train_batch: batch of the training comparison.
    peer_device: PyTorch device of the peer: ``cpu``, or ``cuda`` to compare
      on the GPU that JAX uses.
    side_by_side_rounds: rounds in which the JAX call and the peer's call of
      each comparison take turns, each turn one untimed call and 3 timed ones.
    include_target: also measure the addition target's shape.
  """

  batch_sizes: tuple[int, ...] = (256, 1024, 4096)
  repeats: int = 5
  threads: int = 2
  host_devices: int | Literal["auto"] = "auto"
  train_microbatch: int | Literal["auto"] = "auto"
  peer: bool = False
  peer_sample_batch: int = 1024
  peer_score_batch: int = 1024
  peer_train_batch: int = 512
  peer_device: str = "cpu"
  side_by_side_rounds: int = 5
  include_target: bool = False

  def __post_init__(self):
    owner = "TransformerBench"
    _int_tuple(owner, "batch_sizes", self.batch_sizes, 1)
    _positive_ints(owner, repeats=self.repeats, threads=self.threads,
                   peer_sample_batch=self.peer_sample_batch,
                   peer_score_batch=self.peer_score_batch,
                   peer_train_batch=self.peer_train_batch,
                   side_by_side_rounds=self.side_by_side_rounds)
    if self.host_devices != "auto":
      _positive_ints(owner, host_devices=self.host_devices)
    if self.train_microbatch != "auto" and (
        isinstance(self.train_microbatch, bool)
        or not isinstance(self.train_microbatch, int) or self.train_microbatch < 0):
      raise ExperimentError(f"{owner}.train_microbatch={self.train_microbatch!r} "
                            "must be 'auto' or an integer >= 0")
    if self.peer:
      for name in ("peer_sample_batch", "peer_score_batch"):
        if getattr(self, name) not in self.batch_sizes:
          raise ExperimentError(
              f"{owner}.{name}={getattr(self, name)} must be one of batch_sizes "
              f"{self.batch_sizes}: the comparison reuses that measurement")

  def replace(self, **changes) -> "TransformerBench":
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class RoundBench:
  """The parts of one round of the addition attack.

  Attributes:
    attack_preset: the attack preset whose shapes are timed (``tiny`` for
      tests).
    seeds: seeds side by side under ``vmap``.
    failure_epochs: failure-model epochs.
    train_microbatches: ``train_microbatch`` values at which the two fits are
      timed (0: one pass per step).
    region_bank: regions in the synthetic bank of the rejection-test timing
      (0 skips it).
    repeats: timed calls per part after one warm-up; the median is reported.
  """

  attack_preset: Literal["full", "quick", "tiny"] = "full"
  seeds: int = 5
  failure_epochs: int = 10
  train_microbatches: tuple[int, ...] = (0, CPU_TRAIN_MICROBATCH)
  region_bank: int = 8
  repeats: int = 3

  def __post_init__(self):
    owner = "RoundBench"
    _positive_ints(owner, seeds=self.seeds, failure_epochs=self.failure_epochs,
                   repeats=self.repeats)
    _int_tuple(owner, "train_microbatches", self.train_microbatches, 0)
    if isinstance(self.region_bank, bool) or not isinstance(self.region_bank, int) \
        or self.region_bank < 0:
      raise ExperimentError(f"{owner}.region_bank={self.region_bank!r} must be an "
                            "integer >= 0 (0 skips the bank's timing)")

  def replace(self, **changes) -> "RoundBench":
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class MicrobatchBench:
  """Side-by-side timings of the training-step speed settings.

  Attributes:
    comparisons: the comparisons to run.
    batch: ``split_log_prob``: sequences per training step.
    microbatch: the microbatch size of every comparison.
    rounds: rounds of turns.
    calls: timed calls per turn, after one untimed call.
    small_shapes: small shapes, seconds in all (for tests).
  """

  comparisons: tuple[Comparison, ...] = COMPARISONS
  batch: int = 512
  microbatch: int = CPU_TRAIN_MICROBATCH
  rounds: int = 5
  calls: int = 2
  small_shapes: bool = False

  def __post_init__(self):
    owner = "MicrobatchBench"
    _positive_ints(owner, batch=self.batch, microbatch=self.microbatch,
                   rounds=self.rounds, calls=self.calls)
    if not isinstance(self.comparisons, tuple) or not self.comparisons or any(
        c not in COMPARISONS for c in self.comparisons):
      raise ExperimentError(f"{owner}.comparisons={self.comparisons!r} must name "
                            f"one or more of {', '.join(COMPARISONS)}")
    if self.batch % self.microbatch:
      raise ExperimentError(f"{owner}.microbatch={self.microbatch} must divide "
                            f"batch={self.batch}")

  def replace(self, **changes) -> "MicrobatchBench":
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """A benchmark.

  Attributes:
    which: the benchmark to run (its settings are the field of that name).
    transformer: the transformer's throughput.
    round: the parts of one round of the addition attack.
    microbatch: the training-step speed settings.
  """

  which: Literal["transformer", "round", "microbatch"] = "transformer"
  transformer: TransformerBench = TransformerBench()
  round: RoundBench = RoundBench()
  microbatch: MicrobatchBench = MicrobatchBench()

  def __post_init__(self):
    if self.which not in BENCHMARKS:
      raise ExperimentError(f"BenchConfig.which={self.which!r} must be one of "
                            f"{', '.join(BENCHMARKS)}")
    for name, cls in (("transformer", TransformerBench), ("round", RoundBench),
                      ("microbatch", MicrobatchBench)):
      if not isinstance(getattr(self, name), cls):
        raise ExperimentError(f"BenchConfig.{name} must be a {cls.__name__}, got "
                              f"{type(getattr(self, name)).__name__}")

  def replace(self, **changes) -> "BenchConfig":
    return dataclasses.replace(self, **changes)


def default_config() -> BenchConfig:
  """The committed measurements' settings."""
  return BenchConfig()


def tiny_config() -> BenchConfig:
  """Seconds per benchmark, for tests."""
  return BenchConfig(
      transformer=TransformerBench(batch_sizes=(16,), repeats=1, host_devices=1,
                                   side_by_side_rounds=1),
      round=RoundBench(attack_preset="tiny", seeds=2, failure_epochs=1,
                       train_microbatches=(0, 16), region_bank=3, repeats=1),
      microbatch=MicrobatchBench(comparisons=("split_log_prob",), batch=32,
                                 microbatch=8, rounds=1, calls=1,
                                 small_shapes=True))


PRESETS = {"default": default_config, "tiny": tiny_config}


def check_against_preset(config: BenchConfig, preset: BenchConfig) -> None:
  """Refuses settings of a benchmark other than ``which``, naming their flags
  (:attr:`~banel_jax.experiments.registry.Command.check`)."""
  for name in BENCHMARKS:
    if name != config.which and getattr(config, name) != getattr(preset, name):
      raise ExperimentError(f"--{name}.* apply to --which {name} only (this run "
                            f"is --which {config.which})")


def _machine() -> dict:
  import jax
  return {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
          "platform": platform.platform(), "jax_version": jax.__version__}


# ---------------------------------------------------------------------------
# Timing.


def median_time(fn, repeats: int) -> float:
  """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
  fn()  # warm-up (compiles)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def interleaved_times(fns: dict, rounds: int, calls_per_turn: int = 3,
                      by_round: bool = False) -> dict | tuple[dict, dict]:
  """Median seconds per call of each zero-arg callable, timed in turns.

  Each of ``rounds`` rounds gives every callable a turn: one untimed call, then
  ``calls_per_turn`` timed ones. A slow spell of the machine then falls on all
  of them alike, so the ratio of two medians is a side-by-side comparison. The
  untimed call of each turn absorbs what the previous turn leaves behind (two
  libraries in one process; on 2 cores, a call right after the other library's
  ran 2-7% slower than in a row of its own).

  With ``by_round``, returns ``(medians, per_round)``: ``per_round[name]`` is
  the median of each round's timed calls, so that a ratio can be given per
  round as well (how much it moves between rounds).
  """
  times = {name: [] for name in fns}
  rounds_of = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      fn()
      turn = []
      for _ in range(calls_per_turn):
        t0 = time.perf_counter()
        fn()
        turn.append(time.perf_counter() - t0)
      times[name].extend(turn)
      rounds_of[name].append(statistics.median(turn))
  medians = {name: statistics.median(ts) for name, ts in times.items()}
  return (medians, rounds_of) if by_round else medians


_METRIC_NAMES = {"sample_tokens_per_s": "sampling, tokens/s",
                 "log_prob_sequences_per_s": "log-likelihood, sequences/s",
                 "train_steps_per_s": "training, steps/s"}


def comparison_table(attacker: dict) -> str:
  """A Markdown table of the side-by-side comparison in ``attacker`` (the JSON's
  ``results.attacker`` with a peer): each side's rate, the ratio with its range
  over rounds, and the target. A run that split the batch over several devices
  also gives JAX on one device, and the split's gain over it."""
  side, targets = attacker["side_by_side"], attacker["target_ratio"]
  split = "jax_one_device" in side["sample_tokens_per_s"]

  def rate(v):
    return f"{v:,.{2 if v < 100 else 0}f}"

  head = "| | banel_jax | peer | ratio (rounds) | target |"
  if split:
    head += " banel_jax, one device | split over one device (rounds) |"
  rows = [head, "|" + "---|" * (head.count("|") - 1)]
  for key, name in _METRIC_NAMES.items():
    s = side[key]
    ratio = s["jax"] / s["peer"]
    spread = s.get("ratio_by_round") or [ratio]
    met = "met" if ratio >= targets[key] else "not met"
    row = (f"| {name} | {rate(s['jax'])} | {rate(s['peer'])} | {ratio:.2f}x "
           f"({min(spread):.2f}-{max(spread):.2f}x) | {targets[key]:g}x, {met} |")
    if split:
      gain = s["jax"] / s["jax_one_device"]
      g = s["devices_over_one_device_by_round"]
      row += (f" {rate(s['jax_one_device'])} | {gain:.2f}x "
              f"({min(g):.2f}-{max(g):.2f}x) |")
    rows.append(row)
  return "\n".join(rows)


def forward_flops(cfg, positions: int) -> float:
  """Matmul FLOPs of one causal forward pass over ``positions`` positions.

  Per layer and position: the QKV and output projections (``8 d^2``), the MLP
  (``4 r d^2``, ``r`` the MLP ratio) and attention to the ``t`` positions seen
  so far (``4 t d`` for scores and values); plus the unembedding (``2 d V``).
  Embedding lookups, norms and softmaxes are not counted (not matmuls), so this
  is a lower bound on the work of any implementation of the same model. A
  sampler with a KV cache does the same work for its ``positions`` tokens.
  """
  d, r, v = cfg.width, cfg.mlp_ratio, cfg.vocab_size
  per_position = cfg.num_layers * (8 + 4 * r) * d * d + 2 * d * v
  attention = cfg.num_layers * 4 * d * positions * (positions + 1) // 2
  return float(positions * per_position + attention)


def measure_matmul_peak(repeats: int, sizes=(512, 1024, 2048),
                        torch_threads: int | None = None) -> dict:
  """fp32 GFLOP/s of square matrix products, the best size of each library.

  ``jnp.dot`` (jitted) always; with ``torch_threads``, ``torch.mm`` on that
  many threads too (the peer's BLAS may be faster than XLA's). The peak is the
  best of all.
  """
  import jax
  import jax.numpy as jnp
  dot = jax.jit(jnp.dot)
  out = {"jax": {}}
  for n in sizes:
    a = jax.random.normal(jax.random.key(n), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(n + 1), (n, n), jnp.float32)
    t = median_time(lambda: dot(a, b).block_until_ready(), repeats)
    out["jax"][str(n)] = 2.0 * n ** 3 / t / 1e9
  if torch_threads is not None:
    import torch
    torch.set_num_threads(torch_threads)
    out["torch"] = {}
    for n in sizes:
      a, b = torch.randn(n, n), torch.randn(n, n)
      t = median_time(lambda: torch.mm(a, b), repeats)
      out["torch"][str(n)] = 2.0 * n ** 3 / t / 1e9
  return {"gflops_by_size": out,
          "peak_gflops": max(v for lib in out.values() for v in lib.values())}


def roofline(cfg, peak: dict, ours: dict, peer: dict, targets: dict,
             batches: dict) -> dict:
  """Achieved and needed GFLOP/s of each compared measurement (module doc)."""
  seq = forward_flops(cfg, cfg.max_len)
  # FLOPs per unit of each measurement: a sampled token, a scored sequence, and
  # a training step (forward + backward, about 3 forward passes, per sequence)
  per_unit = {"sample_tokens_per_s": seq / cfg.max_len,
              "log_prob_sequences_per_s": seq,
              "train_steps_per_s": 3.0 * seq * batches["train_steps_per_s"]}
  out = {"matmul_peak": peak, "flops_per_unit": per_unit, "metrics": {}}
  for k, flops in per_unit.items():
    need = flops * targets[k] * peer[k] / 1e9
    out["metrics"][k] = {
        "jax_gflops": flops * ours[k] / 1e9,
        "peer_gflops": flops * peer[k] / 1e9,
        "gflops_needed_for_target": need,
        "needed_over_peak": need / peak["peak_gflops"],
        "target_within_peak": bool(need <= peak["peak_gflops"])}
  return out


def bench_jax(cfg, batch_sizes, repeats, train_batches, train_microbatch=0,
              mesh=None):
  """``(report, calls)``: the JAX measurements by batch, and their callables.

  ``calls[(metric, batch)]`` is ``(zero-arg call, units per call)``, for the
  side-by-side comparison with the peer. With a ``mesh`` of several devices
  (``banel_jax.runtime.data_parallel.data_mesh``) every batch is split over them:
  each device samples, scores and trains on its own rows, and a training step
  sums the gradient over the devices.
  """
  import functools

  import jax
  import jax.numpy as jnp
  import optax
  from flax.training import train_state

  from banel_jax.core.mle import fit_weighted_mle, microbatch_size_for
  from banel_jax.models import transformer as tfm
  from banel_jax.runtime import data_parallel

  tr = tfm.make_transformer(cfg)
  model = tr.model
  params = model.init(jax.random.key(0))
  devices = 1 if mesh is None else mesh.devices.size
  if devices > 1:
    params = jax.device_put(params, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
    sample = jax.jit(data_parallel.sampler(model.sample, mesh), static_argnums=2)
    log_prob = jax.jit(data_parallel.log_prob(model.log_prob, mesh))
  else:
    sample = jax.jit(model.sample, static_argnums=2)
    log_prob = jax.jit(model.log_prob)
  tx = optax.adamw(1e-4)

  def microbatch(b):
    # within one device's share of the batch
    return microbatch_size_for(b // devices, train_microbatch)

  @jax.jit
  def train_step(state, x):
    # one maximum-likelihood step of the library's trainer over the whole batch
    b = x.shape[0]
    if devices > 1:
      fit = data_parallel.fit_weighted_mle(mesh, epochs=1, batch_size=b,
                                           microbatch_size=microbatch(b))
    else:
      fit = functools.partial(fit_weighted_mle, epochs=1, batch_size=b,
                              microbatch_size=microbatch(b))
    state, losses = fit(state, x, jnp.ones((b,), jnp.float32), jax.random.key(0))
    return state, losses[0, 0]

  out, calls = {}, {}
  for b in sorted(set(batch_sizes) | set(train_batches)):
    row = {}
    keys = iter(jax.random.split(jax.random.key(1), 10_000))
    x = sample(params, next(keys), b)
    if b in batch_sizes:
      def draw(b=b, keys=keys):
        sample(params, next(keys), b).block_until_ready()
      t = median_time(draw, repeats)
      row["sample_tokens_per_s"] = b * cfg.max_len / t
      calls["sample_tokens_per_s", b] = (draw, b * cfg.max_len)

      def score(x=x):
        log_prob(params, x).block_until_ready()
      t = median_time(score, repeats)
      row["log_prob_sequences_per_s"] = b / t
      calls["log_prob_sequences_per_s", b] = (score, b)
    state = train_state.TrainState.create(apply_fn=model.log_prob, params=params,
                                          tx=tx)
    holder = [state]

    def step(holder=holder, x=x):
      holder[0], loss = train_step(holder[0], x)
      loss.block_until_ready()
    t = median_time(step, repeats)
    row["train_steps_per_s"] = 1.0 / t
    calls["train_steps_per_s", b] = (step, 1)
    out[b] = row
  # Re-tracing check: after warm-up, more calls at known shapes compile nothing.
  from banel_jax.runtime.compilation import count_compilations
  with count_compilations() as compiles:
    for i in range(3):
      for b in batch_sizes:
        sample(params, jax.random.key(100 + i), b).block_until_ready()
      log_prob(params, x).block_until_ready()
      holder[0], _ = train_step(holder[0], x)
  compiles_after_warmup = compiles.count
  every_batch = sorted(set(batch_sizes) | set(train_batches))
  return {"config": {k: str(v) for k, v in cfg.__dict__.items()},
          "devices": devices,
          "score_chunk": tfm.resolve_score_chunk("auto", max(batch_sizes) // devices),
          "decode_segment_ends": list(tfm.decode_segment_ends(cfg.max_len)),
          "input_tables_by_batch": {  # first block's inputs looked up (sampling)
              str(b): tfm.resolve_input_tables("auto", cfg, b // devices * cfg.max_len)
              for b in every_batch},
          "train_microbatch_by_batch": {str(b): microbatch(b) for b in every_batch},
          "by_batch": {str(k): v for k, v in out.items()},
          "compilations_on_repeat_calls": compiles_after_warmup}, calls


def bench_peer(cfg, threads, repeats, sample_batch, score_batch, train_batch,
               device="cpu"):
  """``(report, calls)`` of the peer; ``calls[metric] = (call, units per call)``."""
  import copy

  import torch
  from transformers import GPT2Config, GPT2LMHeadModel

  if device.startswith("cuda") and not torch.cuda.is_available():
    raise ExperimentError(f"TransformerBench.peer_device={device!r}: PyTorch sees "
                          "no CUDA device")

  def synced(fn):
    # CUDA calls return before the kernels finish: time them to completion.
    if not device.startswith("cuda"):
      return fn

    def run():
      fn()
      torch.cuda.synchronize()
    return run

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_len + 1,
                      n_embd=cfg.width, n_layer=cfg.num_layers, n_head=cfg.num_heads,
                      n_inner=cfg.mlp_ratio * cfg.width, bos_token_id=cfg.bos_id,
                      eos_token_id=cfg.eos_id, pad_token_id=cfg.pad_id,
                      # ours has no dropout: the same math on both sides
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  model = GPT2LMHeadModel(hf_cfg).to(device).eval()
  res = {"torch_version": torch.__version__, "device": device}
  bos = torch.full((sample_batch, 1), cfg.bos_id, dtype=torch.long, device=device)

  # Each call sets the mode it needs: the side-by-side pass calls them in turns.
  def gen():
    model.eval()
    with torch.no_grad():
      model.generate(bos, do_sample=True, temperature=1.0, top_k=0,
                     max_new_tokens=cfg.max_len, min_new_tokens=cfg.max_len,
                     use_cache=True, pad_token_id=cfg.pad_id)
  calls = {"sample_tokens_per_s": (synced(gen), sample_batch * cfg.max_len)}
  x = torch.randint(0, 10, (score_batch, cfg.max_len + 1), device=device)
  x[:, 0] = cfg.bos_id

  def score():
    model.eval()
    with torch.no_grad():
      logits = model(x[:, :-1]).logits
      logp = torch.log_softmax(logits, -1).gather(-1, x[:, 1:, None])[..., 0].sum(1)
    return logp
  calls["log_prob_sequences_per_s"] = (synced(score), score_batch)

  xt = torch.randint(0, 10, (train_batch, cfg.max_len + 1), device=device)
  xt[:, 0] = cfg.bos_id
  opt = [torch.optim.AdamW(model.parameters(), lr=1e-4)]

  def train():
    model.train()
    opt[0].zero_grad()
    logits = model(xt[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size),
                                             xt[:, 1:].reshape(-1))
    loss.backward()
    opt[0].step()
  calls["train_steps_per_s"] = (synced(train), 1)

  # Warm the process up before timing anything: PyTorch's scorer ran 1.6-2.0x
  # faster after a few training steps had run in the process (even for a new
  # model object with the initial weights; measured on 2 cores, cause unknown).
  # The weights and the optimizer are put back afterwards.
  initial = copy.deepcopy(model.state_dict())
  for fn in (gen, score, train, train, train):
    synced(fn)()
  model.load_state_dict(initial)
  opt[0] = torch.optim.AdamW(model.parameters(), lr=1e-4)

  res["sample_batch"] = sample_batch
  res["sample_tokens_per_s"] = (sample_batch * cfg.max_len
                                / median_time(synced(gen), repeats))

  res["score_batch"] = score_batch
  res["log_prob_sequences_per_s"] = (score_batch
                                     / median_time(synced(score), repeats))

  res["train_batch"] = train_batch
  res["train_steps_per_s"] = 1.0 / median_time(synced(train), repeats)
  return res, calls


# ---------------------------------------------------------------------------
# The transformer's throughput.


def run_transformer(cfg: TransformerBench) -> dict:
  """The transformer benchmark (module doc); returns its report."""
  want = (os.cpu_count() or 1) if cfg.host_devices == "auto" else cfg.host_devices
  # before anything touches a device: the CPU backend is made with this many
  applied, why = common.set_cpu_devices(want)
  import jax

  from banel_jax.core.mle import resolve_train_microbatch
  from banel_jax.models import transformer as tfm
  from banel_jax.runtime import data_parallel

  train_microbatch = resolve_train_microbatch(cfg.train_microbatch)
  mesh = None
  if jax.default_backend() == "cpu" and want > 1 and jax.device_count() > 1:
    mesh = data_parallel.data_mesh(jax.devices()[:want])
  shapes = {"attacker": tfm.TransformerConfig()}
  if cfg.include_target:
    from banel_jax.tasks import addition
    shapes["target"] = addition.AdditionTaskConfig().target
  report = {**_machine(), "threads": cfg.threads, "host_devices": want,
            **({} if applied else {"host_devices_not_applied": why}),
            "jax_devices": 1 if mesh is None else int(mesh.devices.size),
            "repeats": cfg.repeats, "train_microbatch": train_microbatch,
            "results": {}}
  jax_calls, one_device_calls = {}, {}
  for name, shape in shapes.items():
    train_batches = ([cfg.peer_train_batch] if (cfg.peer and name == "attacker")
                     else [])
    report["results"][name] = {}
    if mesh is not None:
      print(f"[{name}] JAX, one device ...", flush=True)
      result, one_device_calls[name] = bench_jax(
          shape, cfg.batch_sizes, cfg.repeats, train_batches, train_microbatch)
      report["results"][name]["jax_one_device"] = result
    print(f"[{name}] JAX{'' if mesh is None else f', {mesh.devices.size} devices'}"
          " ...", flush=True)
    result, jax_calls[name] = bench_jax(shape, cfg.batch_sizes, cfg.repeats,
                                        train_batches, train_microbatch, mesh)
    report["results"][name]["jax"] = result
  if cfg.peer:
    shape = shapes["attacker"]
    print("[attacker] PyTorch / transformers GPT-2 ...", flush=True)
    peer, peer_calls = bench_peer(shape, cfg.threads, cfg.repeats,
                                  cfg.peer_sample_batch, cfg.peer_score_batch,
                                  cfg.peer_train_batch, cfg.peer_device)
    batches = {"sample_tokens_per_s": cfg.peer_sample_batch,
               "log_prob_sequences_per_s": cfg.peer_score_batch,
               "train_steps_per_s": cfg.peer_train_batch}
    # The ratios: each JAX call and the peer's call timed in turns, so that a
    # slow spell of the machine slows both sides alike.
    print(f"[attacker] side by side, {cfg.side_by_side_rounds} rounds in turns ...",
          flush=True)
    side = {"rounds": cfg.side_by_side_rounds}
    for k, b in batches.items():
      (ours_call, ours_units), (peer_call, peer_units) = (
          jax_calls["attacker"][k, b], peer_calls[k])
      turns = {"jax": ours_call, "peer": peer_call}
      if one_device_calls:  # the split over devices against one device, too
        turns["jax_one_device"] = one_device_calls["attacker"][k, b][0]
      t, per_round = interleaved_times(turns, cfg.side_by_side_rounds, by_round=True)
      side[k] = {"jax": ours_units / t["jax"], "peer": peer_units / t["peer"],
                 # ours over the peer's, round by round: the ratio's spread
                 "ratio_by_round": [(ours_units / a) / (peer_units / b) for a, b in
                                    zip(per_round["jax"], per_round["peer"])]}
      if one_device_calls:
        side[k]["jax_one_device"] = ours_units / t["jax_one_device"]
        side[k]["devices_over_one_device_by_round"] = [
            a / b for a, b in zip(per_round["jax_one_device"], per_round["jax"])]
    ours = {k: side[k]["jax"] for k in batches}
    peer_side = {k: side[k]["peer"] for k in batches}
    ratios = {k: ours[k] / peer_side[k] for k in batches}
    attacker = report["results"]["attacker"]
    attacker["peer_hf_gpt2_torch"] = peer
    attacker["side_by_side"] = side
    attacker["ratio_jax_over_peer"] = ratios
    attacker["target_ratio"] = dict(TARGET_RATIOS)
    attacker["meets_targets"] = {k: bool(ratios[k] >= TARGET_RATIOS[k])
                                 for k in TARGET_RATIOS}
    print("[machine] fp32 matmul peak ...", flush=True)
    attacker["roofline"] = roofline(
        shape, measure_matmul_peak(
            cfg.repeats,
            torch_threads=cfg.threads if cfg.peer_device == "cpu" else None),
        ours, peer_side, TARGET_RATIOS, batches)
    print(comparison_table(attacker))
  return report


# ---------------------------------------------------------------------------
# The parts of a round.


def bench_round(c, task, n_seeds: int, microbatches, repeats: int) -> dict:
  """Seconds per part of one round (see the module doc) of BaNEL config ``c``
  on the addition ``task``, at each ``train_microbatch`` of ``microbatches``."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax.training import train_state

  from banel_jax.core.distill import make_distill_tx
  from banel_jax.core.failure import make_failure_fitter
  from banel_jax.core.mle import fit_weighted_mle, microbatch_size_for
  from banel_jax.core.posterior import log_ratio
  from banel_jax.models import transformer as tfm
  from banel_jax.tasks import addition

  model = tfm.make_transformer(task.attacker).model
  seed_keys = jax.random.split(jax.random.key(0), n_seeds)
  params = jax.jit(jax.vmap(model.init))(seed_keys)
  target_params = jax.jit(addition.make_target(task).model.init)(jax.random.key(1))
  oracle = addition.make_oracle(target_params, task)
  sample = jax.jit(jax.vmap(model.sample, in_axes=(0, 0, None)), static_argnums=2)
  ratio = jax.jit(jax.vmap(functools.partial(log_ratio, model)))
  x_paid = sample(params, seed_keys, c.samples_per_round)
  x_distill = sample(params, seed_keys, c.distill_samples)
  x_paid_host = np.asarray(x_paid).reshape(-1, x_paid.shape[-1])
  run = lambda fn: (lambda: jax.block_until_ready(fn()))  # noqa: E731

  out = {
      "sample_paid": median_time(
          run(lambda: sample(params, seed_keys, c.samples_per_round)), repeats),
      "oracle": median_time(lambda: oracle(x_paid_host), repeats),
      "calibration": median_time(run(lambda: ratio(
          params, params, sample(params, seed_keys, c.calibration_samples))), repeats),
      "distill_sample": median_time(
          run(lambda: sample(params, seed_keys, c.distill_samples)), repeats),
      "region_test": median_time(run(lambda: ratio(params, params, x_distill)),
                                  repeats),
      "failure_fit": {}, "distill_fit": {}}
  failure_mask = jnp.ones(x_paid.shape[:2], bool)
  ones = jnp.ones(x_distill.shape[:2], jnp.float32)
  tx = make_distill_tx(c)
  proposal = jax.vmap(lambda p: train_state.TrainState.create(
      apply_fn=model.log_prob, params=p, tx=tx))(params)
  for m in microbatches:
    cm = c.replace(train_microbatch=m)
    fit = jax.jit(jax.vmap(make_failure_fitter(model, cm)))
    out["failure_fit"][str(m)] = median_time(
        run(lambda: fit(params, x_paid, failure_mask, seed_keys)), repeats)
    distill_fit = jax.jit(jax.vmap(functools.partial(
        fit_weighted_mle, epochs=c.distill_epochs, batch_size=c.distill_batch_size,
        microbatch_size=microbatch_size_for(c.distill_batch_size, m))))
    out["distill_fit"][str(m)] = median_time(
        run(lambda: distill_fit(proposal, x_distill, ones, seed_keys)), repeats)
  return out


def bench_region_bank(c, task, n_seeds: int, n_regions: int, repeats: int) -> dict:
  """Seconds of ``rejection_mask`` (loop) on a synthetic bank of ``n_regions``
  random transformers' regions, against every sample scored at every region
  (module doc); BaNEL config ``c`` sets the number of samples."""
  import jax
  import jax.numpy as jnp

  from banel_jax.core import posterior
  from banel_jax.models import transformer as tfm

  model = tfm.make_transformer(task.attacker).model

  def bank_of(key):
    keys = jax.random.split(key, 2 * n_regions + 1)
    p0 = model.init(keys[-1])
    x = model.sample(p0, keys[-1], c.distill_samples)
    bank = posterior.empty_region_bank(p0, capacity=max(n_regions, 1))
    for i in range(n_regions):
      pp, fp = model.init(keys[2 * i]), model.init(keys[2 * i + 1])
      lr = posterior.log_ratio(model, pp, fp, x)
      bank = posterior.add_region(bank, pp, fp, jnp.median(lr))
    return bank, x

  banks, xs = jax.jit(jax.vmap(bank_of))(jax.random.split(jax.random.key(2), n_seeds))
  mask = lambda b, x: posterior.rejection_mask(model, b, x, "loop")  # noqa: E731
  remaining = jax.jit(jax.vmap(mask))
  inside = remaining(banks, xs)
  old_blocks = posterior.LOOP_BLOCKS
  posterior.LOOP_BLOCKS = 1  # traced now: one block, every sample at every region
  try:
    every = jax.jit(jax.vmap(mask))
    if not bool(jnp.all(every(banks, xs) == inside)):
      raise RuntimeError("the two rejection tests disagree: the loop over the "
                         "remaining samples rejected other samples than the loop "
                         "over every sample")
  finally:
    posterior.LOOP_BLOCKS = old_blocks
  return {"regions": n_regions, "share_inside": float(jnp.mean(inside)),
          "remaining_only": median_time(
              lambda: remaining(banks, xs).block_until_ready(), repeats),
          "every_sample": median_time(
              lambda: every(banks, xs).block_until_ready(), repeats)}


def round_estimates(parts: dict, n_regions: int) -> dict:
  """Estimated round seconds per microbatch, with 1 and ``n_regions`` regions."""
  fixed = (parts["sample_paid"] + parts["oracle"] + parts["calibration"]
           + parts["distill_sample"])
  return {m: {"1_region": fixed + parts["failure_fit"][m] + parts["distill_fit"][m]
                         + parts["region_test"],
              f"{n_regions}_regions": fixed + parts["failure_fit"][m]
                                      + parts["distill_fit"][m]
                                      + n_regions * parts["region_test"]}
          for m in parts["failure_fit"]}


def run_round(cfg: RoundBench) -> dict:
  """The round benchmark (module doc); returns its report."""
  from banel_jax.experiments import attack
  preset = attack.PRESETS[cfg.attack_preset]()
  c = preset.banel.replace(failure_epochs=cfg.failure_epochs)
  task = preset.task_config()
  print(f"[{cfg.attack_preset}] {cfg.seeds} seeds ...", flush=True)
  parts = bench_round(c, task, cfg.seeds, cfg.train_microbatches, cfg.repeats)
  region_bank = (bench_region_bank(c, task, cfg.seeds, cfg.region_bank, cfg.repeats)
                 if cfg.region_bank else None)
  return {**_machine(), "attack_preset": cfg.attack_preset, "seeds": cfg.seeds,
          "repeats": cfg.repeats,
          "banel": {k: getattr(c, k) for k in (
              "samples_per_round", "calibration_samples", "failure_epochs",
              "failure_batch_size", "distill_samples", "distill_epochs",
              "distill_batch_size")},
          "seconds": parts, "region_bank": region_bank,
          "round_seconds": round_estimates(parts, c.num_rounds)}


# ---------------------------------------------------------------------------
# The speed settings.


def _calls(name: str, settings: MicrobatchBench) -> dict:
  """``{variant: zero-arg call}`` of one comparison, compiled and warmed up
  (the setting first, its baseline second)."""
  import jax
  import jax.numpy as jnp
  import optax
  from flax.training import train_state

  from banel_jax import baselines as B
  from banel_jax.core.mle import fit_weighted_mle
  from banel_jax.core.protocol import RoundBatch
  from banel_jax.models import transformer as tfm

  small = settings.small_shapes
  cfg = (tfm.TransformerConfig(width=32, num_heads=2, max_len=8) if small
         else tfm.TransformerConfig())
  tr = tfm.make_transformer(cfg)
  prior = jax.jit(tr.model.init)(jax.random.key(0))
  run = lambda fn: (lambda: jax.block_until_ready(fn()))  # noqa: E731
  if name == "split_log_prob":
    b = settings.batch
    x = jax.random.randint(jax.random.key(3), (b, cfg.max_len), 0, 10)
    unsplit = lambda p, xs: tr.model.log_prob(p, xs)  # noqa: E731
    out = {}
    for variant, log_prob in (("split", tr.model.log_prob), ("unsplit", unsplit)):
      state = train_state.TrainState.create(apply_fn=log_prob, params=prior,
                                            tx=optax.adamw(1e-4))
      step = jax.jit(lambda s, xs: fit_weighted_mle(
          s, xs, jnp.ones((b,)), jax.random.key(0), epochs=1, batch_size=b,
          microbatch_size=settings.microbatch))
      out[variant] = run(lambda step=step, state=state: step(state, x))
    return out
  m = 40 if small else 500
  start = jax.jit(tr.model.init)(jax.random.key(1))
  x = tr.model.sample(prior, jax.random.key(2), m)
  batch = RoundBatch(x=x, rewards=jnp.zeros(m), evaluated=jnp.ones(m, bool),
                     log_norm=jnp.zeros(()))
  out = {}
  for mb in (settings.microbatch, 0):
    if name == "reinforce":
      method = B.make_reinforce(tr.model, B.PolicyGradientConfig(
          learning_rate=1e-5, kl_weight=0.1, train_microbatch=mb))
    else:
      method = B.make_unlikelihood(
          tr.model, B.UnlikelihoodConfig(
              form="token", learning_rate=1e-5, steps=4 if small else 16,
              anchor_weight=1.0, anchor_samples=32 if small else 256,
              train_microbatch=mb),
          token_log_prob=tr.token_log_prob, token_mask=B.token_id_mask(range(10)))
    state = method.init(jax.random.key(0), prior)
    if name == "reinforce":  # away from the prior: the KL term gives gradients
      state = state.replace(policy=state.policy.replace(params=start))
    update = jax.jit(method.update)
    out[f"microbatch_{mb}"] = run(
        lambda update=update, state=state: update(state, batch, jax.random.key(3)))
  return out


def run_microbatch(cfg: MicrobatchBench) -> dict:
  """The speed-settings benchmark (module doc); returns its report."""
  report = {**_machine(), "small_shapes": cfg.small_shapes, "batch": cfg.batch,
            "microbatch": cfg.microbatch, "rounds": cfg.rounds, "calls": cfg.calls,
            "seconds": {}, "speedup": {}}
  for name in cfg.comparisons:
    print(f"[{name}] ...", flush=True)
    times = interleaved_times(_calls(name, cfg), cfg.rounds, cfg.calls)
    fast, slow = list(times)  # the setting first, its baseline second
    report["seconds"][name] = times
    report["speedup"][name] = times[slow] / times[fast]
    print(f"  {fast} {times[fast]:.3f} s, {slow} {times[slow]:.3f} s: "
          f"{report['speedup'][name]:.2f}x", flush=True)
  return report


# ---------------------------------------------------------------------------
# The command.


RUNNERS = {"transformer": run_transformer, "round": run_round,
           "microbatch": run_microbatch}


def run(config: BenchConfig, out: str | os.PathLike, progress: bool = True) -> dict:
  """Runs the benchmark ``config.which``; writes ``bench_<which>.json`` to
  ``out`` and returns its report. (``progress`` is unused: the benchmarks
  print each part as they go.)"""
  del progress
  if not isinstance(config, BenchConfig):
    raise TypeError(f"config must be a BenchConfig, got {type(config).__name__}")
  from banel_jax.core.config import config_to_dict
  settings = getattr(config, config.which)
  report = {**invocation(), "which": config.which,
            "config": config_to_dict(settings), **RUNNERS[config.which](settings)}
  path = common.write_json(pathlib.Path(out) / f"bench_{config.which}.json", report)
  print(f"wrote {path}")
  return report


COMMAND = register(Command(
    name="bench",
    help="Benchmarks: the transformer's throughput, a round's parts, the speed "
    "settings (JSON).",
    config_cls=BenchConfig, presets=PRESETS, default_preset="default", run=run,
    check=check_against_preset))
