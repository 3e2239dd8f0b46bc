"""The task zoo of the sparse-reward benchmark suite (``banel suite``).

Eight small tasks, each a different kind of structure a user might bring to
BaNEL: a tabular toy, a factorised design space, token sequences with a hidden
trigger, a bracket grammar, an attack on a rule-based adder, binary images, a
SMILES-like molecule grammar and stack-machine programs. Each comes with a
tiny pretrained generator whose success rate lies between 1e-4 and 3e-3
(known exactly, or measured on 400,000 fresh samples with its Clopper-Pearson
interval inside that range), a vectorised host oracle, a NRE budget and a
number of samples per round small enough that ten seeds of BaNEL run side by
side in a few minutes on two CPU cores.

**Halves.** The tasks are split into a tuning half (``toy1d_far``,
``motif_tokens``, ``addition_small``, ``stack_program``) and a held-out half
(``hidden_product``, ``brackets``, ``lattice_path``, ``smiles_like``). The
split was fixed before any method setting was chosen; every choice of a
method's settings (grids, picks, defaults) may look at the tuning half only,
and no choice may be made on the held-out half, whose results are reported
once, at the settings the tuning half picked.

**The tasks.** Rates are of the shipped pretrained models (``<task>.json``
holds each measurement, with its interval and settings).

* ``toy1d_far`` (tuning; exact): the paper's 1-D toy
  (:mod:`banel_jax.tasks.toy1d`), a 61-bin tabular model with the logits
  ``-x^2/2`` of a discretised N(0, 1) on ``[-3, 3]``, rewarded only at the
  far-tail bins ``x = -2.8`` and ``x = +2.8`` (exact rate about 1.6e-3). The
  "pretraining" is analytic.
* ``motif_tokens`` (tuning): a red-teaming trigger. Rows of 12 tokens over 8
  values; success iff the hidden motif ``2 5 5 1`` appears as a contiguous
  run. The data are rows of a hidden Markov chain (random Dirichlet
  transitions), the rows holding the motif removed; the model is the
  running-sum sequence model (:func:`~banel_jax.suite.models.make_sequence_model`).
* ``addition_small`` (tuning; grammar): an attack on a rule-based system.
  Queries ``a+b=`` (1-3 digit operands, then padding) over ``0-9 + = _``; the
  target adds column by column but drops the carry out of the units column
  when both written tens digits are 7 (:func:`~banel_jax.suite.rules.buggy_sum`);
  success iff the query is well-formed and the target's answer is wrong. The
  data are random well-formed queries (shorter operands more common) minus
  the successes; the grammar is the free support check.
* ``stack_program`` (tuning; grammar): program synthesis. Programs of up to
  10 tokens ``PUSH1-3 ADD SUB MUL DUP SWAP END`` for a stack machine; success
  iff the program runs without underflow and leaves exactly one value, 17.
  The data are random programs that run (weighted grammar walks) minus those
  computing 17; the grammar (no underflow, one value left) is the support.
* ``hidden_product`` (held out; exact): a combinatorial design space under a
  factorised proposal. Six positions of 8 values, a product of independent
  categoricals (:func:`~banel_jax.suite.models.make_product_model`); success
  iff positions 0 and 5 are both 7 and a hidden linear form is 3 mod 8 (512
  of the 262,144 designs; the exact rate sums them). Fitted to draws of a
  skewed product distribution minus the successes.
* ``brackets`` (held out; grammar): structured output under a grammar. Rows
  of 12 tokens ``( ) [ ] $``; success iff the row is a matched, balanced
  string (then only ``$``) nested at least 4 deep. The data are random
  balanced strings nested at most 3 deep, so every success is deeper than
  anything the model saw.
* ``lattice_path`` (held out): layout design on binary images. 5x5 images
  under the NADE pixel model (:mod:`banel_jax.models.pixel`); success iff a
  4-connected path of ones crosses from the left column to the right column.
  The data are sparse random images (each pixel 1 with probability 0.17)
  minus the crossing ones.
* ``smiles_like`` (held out; grammar): molecule design. Strings of up to 14
  tokens ``C N O = ( ) 1 2 $`` under a SMILES-like grammar (an atom first,
  bonds followed by atoms, balanced branches, ring digits that close rings of
  at least 3 atoms); success iff valid with a ring, a double-bonded oxygen
  (``=O``) and at least two nitrogens. The data are random valid strings
  (weighted grammar walks) minus the successes.

**Pretrained models.** :func:`pretrain` retrains a task's generator with the
package's own code, deterministically from the task's fixed seed, on data the
task generates (a "near-miss" distribution from which every success was
removed: the rare successes come from the model's leakage), and writes
``<task>.npz`` (the params) and ``<task>.json`` (the settings, the training
time and the measured rate). The shipped files live in
``banel_jax/assets/suite``; :meth:`SuiteTask.setup` loads them (it never
trains). ``python -m banel_jax.suite [NAME ...]`` retrains them there.

Example:
  >>> from banel_jax.suite import tasks
  >>> list(tasks.TASKS)[:4]
  ['toy1d_far', 'motif_tokens', 'addition_small', 'stack_program']
  >>> tasks.get_task("brackets").half
  'held_out'
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import time
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from banel_jax.core.types import GenerativeModel
from banel_jax.suite import models, rules, training

ASSET_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets" / "suite"
# Fresh samples that measure a pretrained rate (>= 200,000: rates near 1e-3
# need that many for an interval of about +-15%).
MEASURE_SAMPLES = 400_000
MEASURE_KEY = 10_000
RATE_RANGE = (1e-4, 3e-3)
ALL_METHODS = ("banel", "banel_support", "reinforce", "rnd", "pseudo_count",
               "unlikelihood", "exact_rejection", "self_imitation")


@dataclasses.dataclass(frozen=True)
class SuiteTask:
  """One task of the suite.

  Attributes:
    name: snake_case id, e.g. ``"motif_tokens"``.
    kind: one line: what a user problem it stands for.
    half: ``"tuning"`` or ``"held_out"`` (see the module doc).
    nre_budget: reward evaluations per seed.
    samples_per_round: samples scored per round (``m``).
  """

  name: str
  kind: str
  half: Literal["tuning", "held_out"]
  nre_budget: int
  samples_per_round: int

  def setup(self):
    """The task's :class:`~banel_jax.experiments.harness.TaskSetup`, with the
    shipped pretrained params (loaded once per process)."""
    return _setup(self.name)


# ---------------------------------------------------------------------------
# Task definitions
# ---------------------------------------------------------------------------


class _Definition(NamedTuple):
  """How one task is built (internal).

  Attributes:
    model: ``() -> GenerativeModel``.
    num_values: values per sample element (featuriser size).
    oracle: host ``x -> float32[n]``.
    grammar: the free validity check's grammar, or ``None``.
    settings: the pretraining settings (recorded in the JSON file).
    make_params: ``settings -> (params, record)``: pretraining.
    exact: ``() -> (prior_rate_of(params), exact_rate_of_state)`` for tasks
      whose rates are computable exactly, or ``None``.
    fast_sample: optional faster sampler of the same distribution.
  """

  model: Callable[[], GenerativeModel]
  num_values: int
  oracle: Callable[[Any], np.ndarray]
  grammar: rules.Grammar | None
  settings: dict
  make_params: Callable[[dict], tuple[dict, dict]]
  exact: Callable | None = None
  fast_sample: Callable | None = None


def _rng(settings: dict) -> np.random.Generator:
  return np.random.default_rng(settings["seed"])


def _remove_successes(x: np.ndarray, oracle: Callable) -> tuple[np.ndarray, dict]:
  """Drops the successes from generated data; returns the rest and counts."""
  hit = np.asarray(oracle(x)) > 0
  return x[~hit], {"generated": len(x), "successes_removed": int(hit.sum()),
                   "size": int((~hit).sum())}


def _fit(model: GenerativeModel, data: np.ndarray, settings: dict) -> tuple[dict, dict]:
  start = time.perf_counter()
  params, losses = training.fit_mle(
      model, data, seed=settings["seed"], steps=settings["steps"],
      batch_size=settings["batch_size"], learning_rate=settings["learning_rate"])
  seconds = time.perf_counter() - start
  return params, {"train_seconds": seconds,
                  "final_loss_nats": float(np.mean(losses[-50:]))}


def _with_data(make_data: Callable[[dict], np.ndarray], oracle: Callable,
               model: Callable[[], GenerativeModel],
               finalize: Callable[[dict, dict], dict] = lambda p, s: p):
  """``make_params`` of a task trained on ``make_data(settings)`` minus its
  successes, then ``finalize``-d (e.g. a sampling temperature)."""

  def make_params(settings):
    start = time.perf_counter()
    data, counts = _remove_successes(make_data(settings), oracle)
    data_seconds = time.perf_counter() - start
    params, record = _fit(model(), data, settings)
    return finalize(params, settings), {"data": counts,
                                        "data_seconds": data_seconds, **record}

  return make_params


def _tempered(params, settings):
  t = settings.get("temperature", 1.0)
  return params if t == 1.0 else jax.tree.map(
      np.asarray, models.with_temperature(params, t))


# --- toy1d_far --------------------------------------------------------------


def _toy():
  from banel_jax.tasks.toy1d import Toy1DTask
  s = _SETTINGS["toy1d_far"]
  return Toy1DTask(num_bins=s["num_bins"], targets=tuple(s["targets"]))


def _toy_params(settings):
  del settings
  return {"logits": np.asarray(_toy().prior_logits(), np.float32)}, {
      "data": None, "train_seconds": 0.0,
      "note": "analytic: the logits -x^2/2 of a discretised N(0, 1)"}


def _state_rate(prior_rate: Callable, rejection_rate: Callable) -> Callable:
  """``state -> exact success rate`` of one seed's state, for every method:
  BaNEL's proposal, a policy-gradient baseline's policy (both through
  ``prior_rate(params)``), exact rejection (``rejection_rate(state)``)."""

  def exact_rate(state) -> float:
    if hasattr(state, "proposal"):
      return prior_rate(state.proposal.params)
    if hasattr(state, "policy"):
      return prior_rate(state.policy.params)
    if hasattr(state, "failures"):
      return rejection_rate(state)
    return float("nan")

  return exact_rate


def _toy_exact():
  from banel_jax.core import sample_set
  task = _toy()

  def prior_rate(params):
    return task.exact_success_rate(np.asarray(jax.nn.log_softmax(
        jnp.asarray(params["logits"])), np.float64))

  prior_logp = np.asarray(jax.nn.log_softmax(task.prior_logits()), np.float64)

  def rejection_rate(state) -> float:  # the prior minus the seen failures
    p = np.exp(prior_logp)
    bins = jnp.arange(task.num_bins, dtype=jnp.int32)
    p[np.asarray(sample_set.contains(state.failures, bins))] = 0.0
    return float(p[task.target_bins].sum() / p.sum())

  return prior_rate, _state_rate(prior_rate, rejection_rate)


def _toy_fast_sample(params, key, n):
  # Inverse CDF: the same categorical, n uniforms instead of n * K Gumbels.
  cdf = jnp.cumsum(jax.nn.softmax(params["logits"]))
  u = jax.random.uniform(key, (n,)) * cdf[-1]
  return jnp.minimum(jnp.searchsorted(cdf, u, side="right"),
                     cdf.shape[0] - 1).astype(jnp.int32)


# --- hidden_product ---------------------------------------------------------

HP_POSITIONS, HP_VALUES = 6, 8
HP_WEIGHTS = np.array([1, 3, 5, 7, 1, 3], np.int64)  # the hidden linear form
HP_RESIDUE = 3
HP_PATTERN = {0: 7, 5: 7}  # position -> required value


def hidden_product_success(x) -> np.ndarray:
  """``float32[n]``: 1 iff ``x[0] == x[5] == 7`` and ``sum_i w_i x_i == 3 (mod
  8)`` with the hidden weights ``w = (1, 3, 5, 7, 1, 3)``."""
  x = np.asarray(x).astype(np.int64)
  ok = np.all((x >= 0) & (x < HP_VALUES), axis=1)
  for pos, value in HP_PATTERN.items():
    ok &= x[:, pos] == value
  ok &= (x @ HP_WEIGHTS) % HP_VALUES == HP_RESIDUE
  return ok.astype(np.float32)


def all_configurations(num_positions: int = HP_POSITIONS,
                       num_values: int = HP_VALUES) -> np.ndarray:
  """Every ``int32[D]`` row of values in ``[0, K)`` (``K**D`` rows, in
  lexicographic order)."""
  grids = np.meshgrid(*[np.arange(num_values)] * num_positions, indexing="ij")
  return np.stack([g.reshape(-1) for g in grids], axis=1).astype(np.int32)


def _hp_model():
  return models.make_product_model(HP_POSITIONS, HP_VALUES)


def _hp_data(settings):
  rng = _rng(settings)
  v = np.arange(HP_VALUES)
  logits = -settings["data_slope"] * v[None, :] + settings["data_noise"] * \
      rng.standard_normal((HP_POSITIONS, HP_VALUES))
  p = np.exp(logits - logits.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  u = rng.random((settings["data_size"], HP_POSITIONS, 1))
  return np.minimum((np.cumsum(p, axis=1)[None] < u).sum(axis=2),
                    HP_VALUES - 1).astype(np.int32)


def _hp_exact():
  from banel_jax.core import sample_set
  model = _hp_model()
  configs = all_configurations()
  success = hidden_product_success(configs) > 0
  wins = jnp.asarray(configs[success])
  log_prob = jax.jit(model.log_prob)

  def prior_rate(params):
    return float(np.exp(np.asarray(log_prob(params, wins), np.float64)).sum())

  def rejection_rate(state) -> float:  # the prior minus the seen failures
    all_x = jnp.asarray(configs)
    p = np.exp(np.asarray(log_prob(state.prior_params, all_x), np.float64))
    p[np.asarray(sample_set.contains(state.failures, all_x))] = 0.0
    return float(p[success].sum() / p.sum())

  return prior_rate, _state_rate(prior_rate, rejection_rate)


# --- motif_tokens -----------------------------------------------------------

MOTIF_LEN, MOTIF_VOCAB = 12, 8
MOTIF = (2, 5, 5, 1)  # the hidden trigger


def motif_success(x) -> np.ndarray:
  """``float32[n]``: 1 iff the row holds the hidden motif ``2 5 5 1``."""
  return rules.contains_motif(x, MOTIF).astype(np.float32)


def _motif_data(settings):
  """Token rows of a hidden Markov chain (a "style" of harmless prompts)."""
  rng = _rng(settings)
  v = MOTIF_VOCAB
  trans = rng.dirichlet(np.full(v, settings["dirichlet"]), size=v)
  first = rng.dirichlet(np.ones(v))
  n = settings["data_size"]
  x = np.zeros((n, MOTIF_LEN), np.int32)
  x[:, 0] = np.minimum((np.cumsum(first)[None] < rng.random((n, 1))).sum(1), v - 1)
  for t in range(1, MOTIF_LEN):
    cdf = np.cumsum(trans[x[:, t - 1]], axis=1)
    x[:, t] = np.minimum((cdf < rng.random((n, 1))).sum(1), v - 1)
  return x


# --- brackets ---------------------------------------------------------------

BRACKET_LEN = 12


def _brackets_data(settings):
  """Random well-formed bracket strings nested at most ``max_data_depth``."""
  rng = _rng(settings)
  cap = settings["max_data_depth"]

  def weights(state, t):
    w = np.ones((len(state["depth"]), len(rules.BRACKET_TOKENS)))
    shallow = np.where(state["depth"] >= cap, 0.0, 1.0)
    w[:, 0] = w[:, 2] = shallow
    w[:, rules.BRACKET_END] = np.where(t >= 4, settings["end_weight"], 0.05)
    return w

  x = rules.generate(rules.BRACKETS, weights, settings["walks"], BRACKET_LEN, rng)
  return x[rules.grammar_valid(rules.BRACKETS, x)]


# --- addition_small ---------------------------------------------------------

ADDITION_LEN = 2 * rules.MAX_DIGITS + 2


def _addition_data(settings):
  """Random well-formed queries ``a+b=`` (1-3 digit operands)."""
  rng = _rng(settings)

  def weights(state, t):
    w = np.ones((len(state["phase"]), len(rules.ADDITION_TOKENS)))
    w[:, rules.PLUS] = w[:, rules.EQUALS] = settings["stop_weight"]
    return w

  x = rules.generate(rules.ADDITION, weights, settings["walks"], ADDITION_LEN, rng)
  return x[rules.grammar_valid(rules.ADDITION, x)]


# --- lattice_path -----------------------------------------------------------

LATTICE_SIDE = 5


def lattice_success(x) -> np.ndarray:
  """``float32[n]``: 1 iff the flat ``5x5`` image holds a 4-connected path of
  ones from its left column to its right column."""
  x = np.asarray(x)
  images = x.reshape(x.shape[0], LATTICE_SIDE, LATTICE_SIDE)
  return rules.crosses_left_to_right(images).astype(np.float32)


def _lattice_model(hidden: int, density: float) -> GenerativeModel:
  from banel_jax.models import pixel
  return pixel.make_pixel_model(LATTICE_SIDE * LATTICE_SIDE, hidden, init_scale=0.01,
                                init_bias=float(np.log(density / (1 - density))))


def _lattice_data(settings):
  """Sparse random images: every pixel 1 with probability ``density``."""
  rng = _rng(settings)
  n, d = settings["data_size"], LATTICE_SIDE * LATTICE_SIDE
  return (rng.random((n, d)) < settings["density"]).astype(np.int32)


def _lattice_tempered(params, settings):
  t = settings.get("temperature", 1.0)
  if t == 1.0:
    return params
  return {**params, "v": params["v"] / t, "b": params["b"] / t}


# --- smiles_like ------------------------------------------------------------

SMILES_LEN = 14


def _smiles_data(settings):
  """Random valid SMILES-like strings from weighted grammar walks."""
  rng = _rng(settings)
  base = np.asarray(settings["token_weights"], np.float64)

  def weights(state, t):
    w = np.repeat(base[None], len(state["depth"]), axis=0)
    w[:, rules.S_END] = np.where(t >= 5, base[rules.S_END], 0.1 * base[rules.S_END])
    return w

  x = rules.generate(rules.SMILES, weights, settings["walks"], SMILES_LEN, rng)
  return x[rules.grammar_valid(rules.SMILES, x)]


# --- stack_program ----------------------------------------------------------

STACK_LEN = 10


def _stack_data(settings):
  """Random programs that run and leave one value (weighted grammar walks)."""
  rng = _rng(settings)
  base = np.asarray(settings["token_weights"], np.float64)
  x = rules.generate(rules.STACK, lambda state, t: base[None],
                     settings["walks"], STACK_LEN, rng)
  return x[rules.grammar_valid(rules.STACK, x)]


# ---------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------


def _seq_settings(**kw):
  return {"steps": 2000, "batch_size": 256, "learning_rate": 3e-3,
          "temperature": 1.0, "hidden": 32, **kw}


_SETTINGS = {
    "toy1d_far": {"seed": 0, "num_bins": 61, "targets": [-2.8, 2.8]},
    "motif_tokens": _seq_settings(seed=1, data_size=20_000, dirichlet=1.0),
    "addition_small": _seq_settings(seed=2, walks=20_000, stop_weight=5.0),
    "stack_program": _seq_settings(seed=3, walks=60_000,
                                   token_weights=[1, 1, 1, 1, 1, 1, 1, 1, 1.5]),
    "hidden_product": {"seed": 4, "steps": 500, "batch_size": 1024,
                       "learning_rate": 0.05, "data_size": 20_000,
                       "data_slope": 0.1, "data_noise": 0.3},
    "brackets": _seq_settings(seed=5, walks=80_000, max_data_depth=3,
                              end_weight=0.6),
    "lattice_path": {"seed": 6, "steps": 2000, "batch_size": 256,
                     "learning_rate": 3e-3, "temperature": 1.0, "hidden": 32,
                     "data_size": 20_000, "density": 0.17},
    "smiles_like": _seq_settings(seed=7, walks=80_000,
                                 token_weights=[4, 0.5, 1, 1, 0.7, 1, 0.4, 0.4, 1]),
}


def _seq_model(name: str, length: int, vocab: int) -> Callable[[], GenerativeModel]:
  return lambda: models.make_sequence_model(length, vocab, _SETTINGS[name]["hidden"])


def _trained(name: str, model: Callable[[], GenerativeModel], num_values: int,
             oracle: Callable, grammar, make_data: Callable[[dict], np.ndarray],
             finalize: Callable[[dict, dict], dict] = _tempered) -> _Definition:
  """A task whose model is fitted to ``make_data(settings)`` minus its
  successes (:func:`_with_data`), at the settings of :data:`_SETTINGS`."""
  return _Definition(model=model, num_values=num_values, oracle=oracle,
                     grammar=grammar, settings=_SETTINGS[name],
                     make_params=_with_data(make_data, oracle, model, finalize))


def _definitions() -> dict[str, _Definition]:
  motif_model = _seq_model("motif_tokens", MOTIF_LEN, MOTIF_VOCAB)
  addition_model = _seq_model("addition_small", ADDITION_LEN,
                              len(rules.ADDITION_TOKENS))
  stack_model = _seq_model("stack_program", STACK_LEN, len(rules.STACK_TOKENS))
  brackets_model = _seq_model("brackets", BRACKET_LEN, len(rules.BRACKET_TOKENS))
  smiles_model = _seq_model("smiles_like", SMILES_LEN, len(rules.SMILES_TOKENS))
  lattice_model = functools.partial(_lattice_model,
                                    _SETTINGS["lattice_path"]["hidden"],
                                    _SETTINGS["lattice_path"]["density"])
  toy = _toy()
  return {
      "toy1d_far": _Definition(
          model=toy.model, num_values=toy.num_bins, oracle=toy.oracle, grammar=None,
          settings=_SETTINGS["toy1d_far"], make_params=_toy_params,
          exact=_toy_exact, fast_sample=_toy_fast_sample),
      "motif_tokens": _trained("motif_tokens", motif_model, MOTIF_VOCAB,
                               motif_success, None, _motif_data),
      "addition_small": _trained("addition_small", addition_model,
                                 len(rules.ADDITION_TOKENS), rules.addition_success,
                                 rules.ADDITION, _addition_data),
      "stack_program": _trained("stack_program", stack_model, len(rules.STACK_TOKENS),
                                rules.stack_success, rules.STACK, _stack_data),
      "hidden_product": _Definition(
          model=_hp_model, num_values=HP_VALUES, oracle=hidden_product_success,
          grammar=None, settings=_SETTINGS["hidden_product"],
          make_params=_with_data(_hp_data, hidden_product_success, _hp_model),
          exact=_hp_exact),
      "brackets": _trained("brackets", brackets_model, len(rules.BRACKET_TOKENS),
                           rules.brackets_success, rules.BRACKETS, _brackets_data),
      "lattice_path": _trained("lattice_path", lattice_model, 2, lattice_success,
                               None, _lattice_data, _lattice_tempered),
      "smiles_like": _trained("smiles_like", smiles_model, len(rules.SMILES_TOKENS),
                              rules.smiles_success, rules.SMILES, _smiles_data),
  }


DEFINITIONS = _definitions()

TASKS: dict[str, SuiteTask] = {t.name: t for t in (
    # tuning half
    SuiteTask("toy1d_far", "1-D toy: a discretised normal rewarded only at two "
              "far-tail bins (exact rates)", "tuning", 1000, 100),
    SuiteTask("motif_tokens", "red-teaming trigger: token sequences that contain a "
              "hidden motif", "tuning", 2000, 100),
    SuiteTask("addition_small", "attack on a rule-based system: queries a+b= that "
              "hit a target adder's hidden carry bug", "tuning", 2000, 100),
    SuiteTask("stack_program", "program synthesis: short stack-machine programs "
              "that compute a target value", "tuning", 2000, 100),
    # held-out half
    SuiteTask("hidden_product", "combinatorial design with a factorised proposal: "
              "a hidden modular constraint plus a pattern (exact rates)", "held_out",
              1000, 100),
    SuiteTask("brackets", "structured output under a grammar: balanced brackets "
              "nested deeper than anything in the data", "held_out", 2000, 100),
    SuiteTask("lattice_path", "layout design on binary images: a 4-connected path "
              "of ones crossing a 5x5 grid", "held_out", 1500, 100),
    SuiteTask("smiles_like", "molecule design: valid SMILES-like strings with a "
              "ring, a C=O and two nitrogens", "held_out", 2000, 100),
)}


def get_task(name: str) -> SuiteTask:
  """The task called ``name``.

  Raises:
    KeyError: no such task (the message lists the valid names).
  """
  try:
    return TASKS[name]
  except (KeyError, TypeError):
    raise KeyError(f"unknown suite task {name!r}; the tasks are "
                   f"{', '.join(TASKS)}") from None


# ---------------------------------------------------------------------------
# Setup, pretraining, measurement
# ---------------------------------------------------------------------------


def param_count(params) -> int:
  """Number of scalars in a params pytree."""
  return int(sum(np.size(a) for a in jax.tree.leaves(params)))


def asset_paths(name: str, directory=ASSET_DIR) -> tuple[pathlib.Path, pathlib.Path]:
  """``(<dir>/<name>.npz, <dir>/<name>.json)``."""
  get_task(name)
  directory = pathlib.Path(directory)
  return directory / f"{name}.npz", directory / f"{name}.json"


def load_record(name: str, directory=ASSET_DIR) -> dict:
  """The JSON record shipped with a task's params."""
  with open(asset_paths(name, directory)[1]) as f:
    return json.load(f)


def load_pretrained(name: str, directory=ASSET_DIR) -> dict:
  """A task's pretrained params from ``directory`` (default: the shipped ones).

  Raises:
    FileNotFoundError: no params file (make it with :func:`pretrain`).
  """
  path = asset_paths(name, directory)[0]
  if not path.exists():
    raise FileNotFoundError(f"no pretrained params for suite task {name!r} at "
                            f"{path}: make them with banel_jax.suite.tasks."
                            f"pretrain({name!r}, out_dir)")
  params = training.load_params(path)
  from banel_jax.core.protocol import check_params
  check_params(DEFINITIONS[name].model(), params)
  return params


def _methods(has_support: bool) -> tuple[str, ...]:
  return tuple(m for m in ALL_METHODS if has_support or m != "banel_support")


def make_setup(name: str, params: dict):
  """The :class:`~banel_jax.experiments.harness.TaskSetup` of task ``name``
  at ``params``."""
  from banel_jax.baselines import one_hot_features
  from banel_jax.experiments.harness import TaskSetup
  d = DEFINITIONS[get_task(name).name]
  model = d.model()
  grammar = d.grammar
  support = malformed = None
  if grammar is not None:
    support = functools.partial(rules.grammar_valid, grammar, xp=jnp)

    def malformed(x):
      return ~rules.grammar_valid(grammar, np.asarray(x))

  exact_rate = prior_exact = None
  if d.exact is not None:
    prior_rate, exact_rate = d.exact()
    prior_exact = prior_rate(params)
  fast = model if d.fast_sample is None else model._replace(sample=d.fast_sample)
  return TaskSetup(
      name=name, model=model, prior_params=params, oracle=d.oracle,
      featurize=one_hot_features(d.num_values), num_values=d.num_values,
      malformed=malformed, exact_rate=exact_rate, token_log_prob=None,
      token_mask=None, fast_prior_model=fast, methods=_methods(support is not None),
      prior_exact_rate=prior_exact, support=support)


@functools.cache
def _setup(name: str):
  return make_setup(name, load_pretrained(name))


def measure(name: str, params: dict, samples: int = MEASURE_SAMPLES) -> dict:
  """The measured (and, where known, exact) success rate of task ``name``'s
  model at ``params``: ``{"hits", "samples", "rate", "interval", "exact_rate",
  "seconds"}``."""
  from banel_jax.experiments.harness import measure_rate
  d = DEFINITIONS[get_task(name).name]
  start = time.perf_counter()
  m = measure_rate(d.model(), params, d.oracle, samples, key=MEASURE_KEY)
  est = m["estimate"]
  exact = d.exact()[0](params) if d.exact is not None else None
  return {"hits": est["successes"], "samples": m["samples"], "rate": m["rate"],
          "interval": [est["low"], est["high"]], "exact_rate": exact,
          "seconds": time.perf_counter() - start}


def model_record(name: str, params: dict) -> dict:
  """The model's family and size, for the JSON record."""
  d = DEFINITIONS[name]
  model = d.model()
  family = {"toy1d_far": "tabular", "hidden_product": "product",
            "lattice_path": "pixel_nade"}.get(name, "sequence")
  return {"family": family, "event_shape": list(model.event_shape),
          "num_values": d.num_values, "param_count": param_count(params),
          **({"hidden": d.settings["hidden"]} if "hidden" in d.settings else {})}


def pretrain(name: str, out_dir) -> dict:
  """Retrains task ``name``'s model deterministically from its fixed seed and
  writes ``<out_dir>/<name>.npz`` and ``<out_dir>/<name>.json``.

  Args:
    name: a task of :data:`TASKS`.
    out_dir: the folder to write to (created if missing).

  Returns:
    The record written to the JSON file: the task, the model, the pretraining
    settings and data counts, the training time and the measured rate.
  """
  task = get_task(name)
  d = DEFINITIONS[name]
  start = time.perf_counter()
  params, train_record = d.make_params(d.settings)
  seconds = time.perf_counter() - start
  params = {k: np.asarray(v, np.float32) for k, v in params.items()}
  measurement = measure(name, params)
  from banel_jax.core.config import jsonable
  record = jsonable({
      "task": name, "kind": task.kind, "half": task.half,
      "nre_budget": task.nre_budget, "samples_per_round": task.samples_per_round,
      "model": model_record(name, params), "pretrain": d.settings,
      "pretrain_seconds": seconds, **train_record,
      "measurement": measurement, "rate_range": list(RATE_RANGE)})
  npz, js = asset_paths(name, out_dir)
  training.save_params(npz, params)
  from banel_jax.experiments.harness import write_json_atomic
  write_json_atomic(js, record)
  return record


def main(argv=None) -> None:
  """Retrains the named tasks (default: all) and prints their rates."""
  import argparse
  parser = argparse.ArgumentParser(description="Retrain the suite's pretrained "
                                   "models and write their asset files.")
  parser.add_argument("names", nargs="*", help=f"tasks (default: all): "
                      f"{', '.join(TASKS)}")
  parser.add_argument("--out", default=os.fspath(ASSET_DIR))
  args = parser.parse_args(argv)
  for name in args.names or list(TASKS):
    r = pretrain(name, args.out)
    m = r["measurement"]
    print(f"{name}: rate {m['rate']:.2e} [{m['interval'][0]:.2e}, "
          f"{m['interval'][1]:.2e}] ({m['hits']}/{m['samples']}), exact "
          f"{m['exact_rate']}, {r['pretrain_seconds']:.1f} s", flush=True)
