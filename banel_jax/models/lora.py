"""Low-rank adapters (LoRA): BaNEL's models as small deltas of one frozen base.

A BaNEL run keeps many copies of the model's parameters: the proposal, the
failure model, their optimizer states, and two copies per rejection region
(:class:`~banel_jax.core.posterior.RegionBank`). For a pretrained decoder of
half a billion parameters that is 2 GB (float32) per region.
:func:`lora_model` turns a :class:`~banel_jax.core.types.GenerativeModel` and
its frozen base parameters into a model whose parameters are only low-rank
adapters: for each adapted kernel ``W`` ``[in, out]`` a pair ``a`` ``[in, r]``
(random, small) and ``b`` ``[r, out]`` (zeros), standing for
``W + (alpha / r) * a @ b``. A fresh adapter is the base model exactly; the
core trains, stores and checkpoints adapters only, and a region costs two
adapters.

Use it for pretrained models too large to copy per region
(:mod:`banel_jax.models.hf`); a small model trained from scratch gains nothing.

Two ways to apply the adapters (``mode``):

* ``"low_rank"`` (Flax models whose adapted kernels are ``nn.Dense``
  kernels, as in :mod:`banel_jax.models.hf`): each adapted layer computes
  ``x @ W + scale * (x @ a) @ b`` (a ``flax.linen.intercept_methods``
  interceptor). No merged weight and no full-size weight gradient is formed.
  Where the region bank is tested in one ``vmap``, the base weights are one
  operand shared by all regions, and the work that does not depend on the
  adapters (the token embeddings; with :func:`layers_from`, whole blocks)
  runs once for all of them.
* ``"merge"`` (any model over a params pytree): ``W + scale * a @ b`` is formed
  and the base functions run on the merged params.

``"auto"`` (default) picks ``"low_rank"`` when tracing the model shows every
adapted kernel used by an ``nn.Dense`` layer, else ``"merge"``.

The base parameters reach compiled programs one of two ways. The model's
functions close over ``base_params``, so ``jax.jit(banel.update)`` works
unchanged, but JAX embeds closed-over arrays into each executable as
constants: a copy of the base in every compiled program (for a 0.5B-parameter
decoder, 2 GB per program). Passed as an argument of the compiled function
instead, the base is one buffer that every program reads:

* :class:`~banel_jax.BanelRunner` and :func:`~banel_jax.run_banel` do so when
  given the ``LoraModel`` itself in place of the model (its
  :attr:`LoraModel.frozen` hook): the prior params are then adapters, and the
  base is an argument of every program the runner compiles (the round's
  sampling and update, the evaluation, the diagnostics), not mapped over the
  seeds and replicated over the seed mesh's devices. The run directory's
  checkpoints hold the adapters' state only (the base is the user's
  checkpoint: reload it to resume), and a run resumes as any other. Given
  ``lm.model``, the runner runs the same rounds with the base embedded in
  each program (results equal up to float rounding).
* :attr:`LoraModel.jit` for functions of your own::

    lm = lora.lora_model(gen.model, base_params, rank=8)
    res = bj.run_banel(lm, lm.model.init(key), oracle, config)   # the runner
    banel = bj.make_banel(lm.model, config)
    update = lm.jit(banel.update)          # like jax.jit(banel.update)
    state = lm.jit(banel.init)(key, lm.model.init(key))

Memory of one region (two adapters) at Qwen2.5-0.5B's shapes (494,032,768
parameters, tied embeddings; :func:`lora_memory`, from shapes only), with
adapters in the base's dtype:

====================  ====  ===================  =================
adapted kernels       rank  region (parameters)  share of the base
====================  ====  ===================  =================
attention (default)      8            2,162,688              0.44%
attention (default)     16            4,325,376              0.88%
attention and MLP        8            8,798,208              1.78%
attention and MLP       16           17,596,416              3.56%
====================  ====  ===================  =================

Without adapters a region holds 2 x 494,032,768 parameters (200%).

Example (a tiny random decoder):
  >>> import jax
  >>> from banel_jax.models import hf, lora
  >>> cfg = hf.DecoderConfig(model_type="llama", vocab_size=11, hidden_size=16,
  ...     num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
  ...     intermediate_size=32, max_positions=64, norm_eps=1e-6,
  ...     activation="silu", tie_word_embeddings=True, qkv_bias=False,
  ...     out_bias=False, mlp_bias=False)
  >>> gen = hf.make_prompted_model(cfg, prompt=[1, 5], max_new_tokens=4,
  ...                              end_ids=[2], pad_id=0)
  >>> base = jax.jit(gen.model.init)(jax.random.key(0))
  >>> lm = lora.lora_model(gen.model, base, rank=2)
  >>> lm.mode, lora.adapter_param_count(base, rank=2)
  ('low_rank', 224)
  >>> adapters = lm.model.init(jax.random.key(1))
  >>> x = jax.jit(gen.model.sample, static_argnums=2)(base, jax.random.key(2), 3)
  >>> lp = lm.jit(lm.model.log_prob)(adapters, x)
  >>> bool((lp == jax.jit(gen.model.log_prob)(base, x)).all())  # the base exactly
  True
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from banel_jax.core.protocol import check_params
from banel_jax.core.types import GenerativeModel, Params, PRNGKey, SplitLogProb
from banel_jax.runtime import frozen as frozen_lib

Path = tuple[str, ...]
TargetFn = Callable[[Path, Any], bool]

# Scopes of the attention and MLP layers of the decoders of
# :mod:`banel_jax.models.hf` (Llama/Qwen2: ``self_attn``, ``mlp``; GPT-2:
# ``attn``, ``mlp``).
ATTENTION_SCOPES = ("self_attn", "attn")
MLP_SCOPES = ("mlp",)

MODES = ("auto", "low_rank", "merge")


def _is_kernel(path: Path, leaf) -> bool:
  return bool(path) and path[-1] == "kernel" and len(np.shape(leaf)) == 2


def attention_kernels(path: Path, leaf) -> bool:
  """Target rule ``"attention"``: the 2-D ``kernel`` of every layer under an
  attention scope (Llama/Qwen2 ``q/k/v/o_proj``, GPT-2 ``c_attn``/``c_proj``)."""
  return _is_kernel(path, leaf) and any(p in ATTENTION_SCOPES for p in path[:-1])


def attention_mlp_kernels(path: Path, leaf) -> bool:
  """Target rule ``"attention_mlp"``: :func:`attention_kernels` and the MLP's
  kernels (Llama/Qwen2 ``gate/up/down_proj``, GPT-2 ``c_fc``/``c_proj``)."""
  return _is_kernel(path, leaf) and any(p in ATTENTION_SCOPES + MLP_SCOPES
                                        for p in path[:-1])


TARGET_RULES: dict[str, TargetFn] = {"attention": attention_kernels,
                                     "attention_mlp": attention_mlp_kernels}

# A decoder block's scope: ``layers_<i>`` (Llama/Qwen2) or ``h_<i>`` (GPT-2).
_LAYER = re.compile(r"^(?:layers|h)_(\d+)$")


def layers_from(first: int, targets: str | TargetFn = "attention") -> TargetFn:
  """Target rule: ``targets``, in decoder blocks ``first`` and above only.

  The blocks below ``first`` keep their base weights, so their work does not
  depend on the adapters: where the region bank is tested in one ``vmap``
  (``region_strategy="vmap"``), JAX computes it once per batch for every
  region, and XLA once for a region's proposal and failure model alike.
  Adapting the top half of the blocks about halves the union test's cost per
  region, and the adapters' size.

  Args:
    first: index of the lowest adapted block (``layers_<i>`` or ``h_<i>``).
    targets: the rule applied within those blocks.

  Returns:
    A function ``(path, leaf) -> bool`` for :func:`lora_model`'s ``targets``.
  """
  if isinstance(first, bool) or not isinstance(first, int) or first < 0:
    raise ValueError(f"first must be an int >= 0, got {first!r}")
  rule = _target_fn(targets)

  def in_blocks(path: Path, leaf) -> bool:
    blocks = [int(m.group(1)) for m in map(_LAYER.match, path) if m]
    return bool(blocks) and blocks[0] >= first and rule(path, leaf)

  return in_blocks


def _target_fn(targets) -> TargetFn:
  if isinstance(targets, str):
    if targets not in TARGET_RULES:
      raise ValueError(f"targets={targets!r} is not a known rule; use one of "
                       f"{sorted(TARGET_RULES)} or a function (path, leaf) -> bool")
    return TARGET_RULES[targets]
  if not callable(targets):
    raise ValueError(f"targets must be a rule name {sorted(TARGET_RULES)} or a "
                     f"function (path, leaf) -> bool, got {targets!r}")
  return targets


def _entry_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _path_names(path) -> Path:
  return tuple(_entry_name(e) for e in path)


class AdaptedLeaf(NamedTuple):
  """One adapted parameter leaf.

  Attributes:
    path: names of the leaf in the base params, e.g.
      ``("layers_0", "self_attn", "q_proj", "kernel")``.
    fan_in: rows of the kernel (``a`` is ``[fan_in, rank]``).
    fan_out: columns of the kernel (``b`` is ``[rank, fan_out]``).
    dtype: dtype of the kernel.
  """

  path: Path
  fan_in: int
  fan_out: int
  dtype: Any


def _shape_tree(base):
  """The params (or their shapes) of ``base``: a params pytree as is, a
  :class:`~banel_jax.models.hf.DecoderConfig` as ``jax.eval_shape`` of its
  ``init`` (nothing allocated)."""
  from banel_jax.models.hf.config import DecoderConfig
  if isinstance(base, DecoderConfig):
    from banel_jax.models.hf.generation import make_decoder
    return jax.eval_shape(make_decoder(base).init, jax.random.key(0))
  return base


def adapted_leaves(base, targets: str | TargetFn = "attention"
                   ) -> tuple[AdaptedLeaf, ...]:
  """The leaves of ``base`` that ``targets`` adapts, in pytree order.

  Args:
    base: a params pytree (arrays or ``jax.ShapeDtypeStruct``) or a
      :class:`~banel_jax.models.hf.DecoderConfig`.
    targets: a rule name (:data:`TARGET_RULES`) or a function
      ``(path, leaf) -> bool`` of a leaf's path names and the leaf.

  Returns:
    One :class:`AdaptedLeaf` per adapted leaf.

  Raises:
    ValueError: ``targets`` is unknown, matches nothing, or matches a leaf
      that is not 2-D or not floating.
  """
  fn = _target_fn(targets)
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(_shape_tree(base))[0]:
    names = _path_names(path)
    if not fn(names, leaf):
      continue
    shape = tuple(np.shape(leaf))
    dtype = jnp.dtype(getattr(leaf, "dtype", jnp.float32))
    if len(shape) != 2:
      raise ValueError(f"targets matched {'/'.join(names)} of shape {shape}: only 2-D "
                       "[in, out] kernels can be adapted")
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f"targets matched {'/'.join(names)} of dtype {dtype}: only "
                       "floating kernels can be adapted")
    out.append(AdaptedLeaf(names, shape[0], shape[1], dtype))
  if not out:
    raise ValueError(f"targets={targets!r} matched no parameter of the base (rules "
                     f"look for 2-D 'kernel' leaves under {ATTENTION_SCOPES + MLP_SCOPES}"
                     "); pass a function (path, leaf) -> bool that selects the kernels")
  return tuple(out)


def _check_rank(rank) -> int:
  if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
    raise ValueError(f"rank must be a positive int, got {rank!r}")
  return int(rank)


def check_rank_fits(base, rank: int, targets: str | TargetFn = "attention"
                    ) -> tuple[AdaptedLeaf, ...]:
  """The adapted leaves of ``base`` (:func:`adapted_leaves`), after checking
  that ``rank`` is at most every one's ``min(in, out)``.

  Raises:
    ValueError: a bad ``rank`` or ``targets``, or a kernel too small for the
      rank (named).
  """
  rank = _check_rank(rank)
  leaves = adapted_leaves(base, targets)
  for t in leaves:
    if rank > min(t.fan_in, t.fan_out):
      raise ValueError(f"rank={rank} exceeds min(in, out)={min(t.fan_in, t.fan_out)} "
                       f"of {'/'.join(t.path)} (shape [{t.fan_in}, {t.fan_out}]): "
                       "such an adapter is no smaller than the kernel")
  return leaves


def adapter_param_count(base, rank: int, targets: str | TargetFn = "attention") -> int:
  """Parameters of one adapter: ``sum(rank * (in + out))`` over adapted kernels.

  Args:
    base: a params pytree (arrays or ``jax.ShapeDtypeStruct``) or a
      :class:`~banel_jax.models.hf.DecoderConfig` (its shapes come from
      ``jax.eval_shape``: nothing is allocated).
    rank: the adapters' rank ``r``.
    targets: which kernels are adapted (see :func:`adapted_leaves`).

  Returns:
    The number of scalars in one adapter pytree (``lora_model(...).model.init``).
  """
  rank = _check_rank(rank)
  return sum(rank * (t.fan_in + t.fan_out) for t in adapted_leaves(base, targets))


def region_bytes(base, rank: int, targets: str | TargetFn = "attention",
                 dtype: Any = None) -> int:
  """Bytes of one rejection region with LoRA: two adapters (proposal, failure).

  Args:
    base: as in :func:`adapter_param_count`.
    rank: the adapters' rank.
    targets: which kernels are adapted.
    dtype: the adapters' dtype; ``None``: each adapted kernel's own dtype (the
      default of :func:`lora_model`).

  Returns:
    ``2 * sum(rank * (in + out) * itemsize)`` over the adapted kernels.
  """
  rank = _check_rank(rank)
  return 2 * sum(rank * (t.fan_in + t.fan_out)
                 * jnp.dtype(t.dtype if dtype is None else dtype).itemsize
                 for t in adapted_leaves(base, targets))


class LoraMemory(NamedTuple):
  """What a region costs with and without LoRA (see :func:`lora_memory`).

  Attributes:
    rank: the adapters' rank.
    base_params: scalars in the base params.
    base_bytes: bytes of the base params.
    adapter_params: scalars in one adapter.
    region_params: scalars in one region with LoRA (two adapters).
    region_bytes: bytes of one region with LoRA.
    full_region_bytes: bytes of one region without LoRA (two full copies).
    region_fraction: ``region_bytes / base_bytes``.
  """

  rank: int
  base_params: int
  base_bytes: int
  adapter_params: int
  region_params: int
  region_bytes: int
  full_region_bytes: int
  region_fraction: float


def lora_memory(base, rank: int, targets: str | TargetFn = "attention",
                dtype: Any = None) -> LoraMemory:
  """The memory of one region with LoRA, against the base's size.

  Args:
    base: a params pytree or a :class:`~banel_jax.models.hf.DecoderConfig`
      (shapes only, from ``jax.eval_shape``).
    rank: the adapters' rank.
    targets: which kernels are adapted.
    dtype: the adapters' dtype (``None``: each kernel's own).

  Returns:
    A :class:`LoraMemory`.

  Example:
    >>> from banel_jax.models import hf
    >>> qwen = hf.config_from_hf({"model_type": "qwen2", "vocab_size": 151936,
    ...     "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    ...     "num_attention_heads": 14, "num_key_value_heads": 2,
    ...     "tie_word_embeddings": True})
    >>> m = lora_memory(qwen, rank=8)
    >>> m.base_params, m.region_params, round(100 * m.region_fraction, 2)
    (494032768, 2162688, 0.44)
  """
  shapes = _shape_tree(base)
  leaves = jax.tree.leaves(shapes)
  base_params = int(sum(math.prod(np.shape(x)) for x in leaves))
  base_bytes = int(sum(math.prod(np.shape(x)) * jnp.dtype(x.dtype).itemsize
                       for x in leaves))
  count = adapter_param_count(shapes, rank, targets)
  nbytes = region_bytes(shapes, rank, targets, dtype)
  return LoraMemory(rank=int(rank), base_params=base_params, base_bytes=base_bytes,
                    adapter_params=count, region_params=2 * count,
                    region_bytes=nbytes, full_region_bytes=2 * base_bytes,
                    region_fraction=nbytes / base_bytes)


# The base params bound by ``LoraModel.with_base`` while a function is traced:
# pairs (owner, params), innermost last.
_BOUND: contextvars.ContextVar[tuple] = contextvars.ContextVar(
    "banel_jax_lora_bound_base", default=())


class LoraModel(NamedTuple):
  """A model whose parameters are LoRA adapters over a frozen base.

  Attributes:
    model: the :class:`~banel_jax.core.types.GenerativeModel` over adapters
      (pass it to ``make_banel``). ``init`` gives a fresh adapter (``b = 0``:
      the base model); ``log_prob`` (a :class:`~banel_jax.SplitLogProb` when the
      base's is) and ``sample`` run the base functions with the adapters applied.
    base_params: the frozen base parameters.
    rank: the adapters' rank ``r``.
    scale: ``alpha / r``, the factor of ``a @ b``.
    mode: ``"low_rank"`` or ``"merge"`` (see the module doc).
    targets: the adapted leaves (:class:`AdaptedLeaf`), in pytree order.
    merge: ``merge(adapters) -> params``, the full params ``W + scale * a @ b``
      (to export a fine-tuned model, or to check the adapters).
    with_base: ``with_base(params)``, a context manager: while it is open, the
      model's functions use ``params`` (e.g. a traced argument of an enclosing
      ``jax.jit``) in place of ``base_params``.
    jit: ``jit(fn, static_argnums=(), donate_argnums=(), **jit_kwargs)``:
      ``jax.jit(fn)`` with the base params passed to the compiled function as
      an argument instead of embedded in it as constants. ``fn`` calls the
      model's functions (e.g. ``banel.update``) as usual. The result is called
      like ``fn`` and has ``.lower(*args)``.
    frozen: (property) the base as a :class:`~banel_jax.runtime.frozen.Frozen`
      hook, ``Frozen(base_params, with_base)``: what
      :class:`~banel_jax.BanelRunner` reads when given the ``LoraModel`` in
      place of ``model``, to pass the base to its compiled programs as an
      argument.
  """

  model: GenerativeModel
  base_params: Params
  rank: int
  scale: float
  mode: str
  targets: tuple[AdaptedLeaf, ...]
  merge: Callable[[Params], Params]
  with_base: Callable[[Params], contextlib.AbstractContextManager]
  jit: Callable[..., Callable]

  @property
  def frozen(self) -> frozen_lib.Frozen:
    return frozen_lib.Frozen(self.base_params, self.with_base)


def _get(tree, path: Path):
  for name in path:
    tree = tree[name]
  return tree


def _set(tree: dict, path: Path, value) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def lora_model(model: GenerativeModel, base_params: Params, rank: int, *,
               alpha: float | None = None, targets: str | TargetFn = "attention",
               mode: str = "auto", dtype: Any = None) -> LoraModel:
  """LoRA adapters of ``model`` around the frozen ``base_params``.

  Args:
    model: the base model; its functions take the full params.
    base_params: the frozen base params (e.g. a pretrained checkpoint).
    rank: the adapters' rank ``r`` (at most ``min(in, out)`` of every adapted
      kernel).
    alpha: the adapters' scale is ``alpha / rank`` (default ``alpha = rank``:
      scale 1).
    targets: which leaves are adapted: ``"attention"`` (default; the attention
      projections' kernels of :mod:`banel_jax.models.hf` decoders),
      ``"attention_mlp"`` (and the MLP's), or a function
      ``(path, leaf) -> bool`` of a leaf's path names (e.g.
      ``("layers_0", "mlp", "up_proj", "kernel")``) and the leaf.
    mode: ``"low_rank"``, ``"merge"`` or ``"auto"`` (see the module doc).
    dtype: the adapters' dtype; ``None``: each adapted kernel's own dtype.

  Returns:
    A :class:`LoraModel`; its ``.model`` is the
    :class:`~banel_jax.core.types.GenerativeModel` over adapters.

  Raises:
    ValueError: a bad ``rank``, ``alpha``, ``targets`` or ``mode``;
      ``base_params`` that do not fit ``model``; ``mode="low_rank"`` for a
      model whose adapted kernels are not all used by ``flax.linen.Dense``
      layers.
  """
  rank = _check_rank(rank)
  if alpha is None:
    alpha = float(rank)
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
      math.isfinite(alpha) and alpha > 0):
    raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if not isinstance(model, GenerativeModel):
    raise ValueError(f"model must be a banel_jax GenerativeModel, got "
                     f"{type(model).__name__}")
  check_params(model, base_params, name="base_params")
  leaves = check_rank_fits(base_params, rank, targets)
  scale = float(alpha) / rank
  paths = {t.path: t for t in leaves}
  adapter_dtype = {t.path: jnp.dtype(t.dtype if dtype is None else dtype)
                   for t in leaves}
  base_def = jax.tree.structure(base_params)
  base_shapes = [tuple(np.shape(x)) for x in jax.tree.leaves(base_params)]
  owner = object()

  def init(key: PRNGKey) -> Params:
    adapters = {}
    for i, t in enumerate(leaves):
      dt = adapter_dtype[t.path]
      a = (jax.random.normal(jax.random.fold_in(key, i), (t.fan_in, rank), jnp.float32)
           / math.sqrt(t.fan_in)).astype(dt)
      _set(adapters, t.path, {"a": a, "b": jnp.zeros((rank, t.fan_out), dt)})
    return adapters

  def check_adapters(adapters) -> None:
    for t in leaves:
      try:
        pair = _get(adapters, t.path)
        a, b = pair["a"], pair["b"]
      except (KeyError, TypeError, IndexError):
        raise ValueError(f"adapters lack {'/'.join(t.path)}: expected the pytree of "
                         "this LoraModel's model.init") from None
      for name, x, shape in (("a", a, (t.fan_in, rank)), ("b", b, (rank, t.fan_out))):
        if tuple(np.shape(x)) != shape:
          raise ValueError(f"adapters {'/'.join(t.path)}/{name} must have shape "
                           f"{shape}, got {tuple(np.shape(x))}")
    n = len(jax.tree.leaves(adapters))
    if n != 2 * len(leaves):
      raise ValueError(f"adapters hold {n} arrays; this LoraModel's have "
                       f"{2 * len(leaves)} (two per adapted kernel)")

  def current_base() -> Params:
    for who, params in reversed(_BOUND.get()):
      if who is owner:
        return params
    return base_params

  def merge_into(params, adapters):
    def merged(path, w):
      t = paths.get(_path_names(path))
      if t is None:
        return w
      pair = _get(adapters, t.path)
      delta = jnp.dot(pair["a"].astype(jnp.float32), pair["b"].astype(jnp.float32))
      return (w.astype(jnp.float32) + scale * delta).astype(w.dtype)
    return jax.tree_util.tree_map_with_path(merged, params)

  def interceptor(adapters, hits=None):
    def intercept(next_fun, args, kwargs, context):
      module = context.module
      if context.method_name != "__call__" or not isinstance(module, nn.Dense):
        return next_fun(*args, **kwargs)
      path = tuple(module.path) + ("kernel",)
      t = paths.get(path)
      y = next_fun(*args, **kwargs)
      if t is None:
        return y
      if hits is not None:
        hits.add(path)
      x = args[0] if args else kwargs["inputs"]
      chex.assert_axis_dimension(x, -1, t.fan_in)
      pair = _get(adapters, path)
      a, b = pair["a"], pair["b"]
      low = jnp.dot(jnp.dot(x.astype(a.dtype), a), b)
      return y + (scale * low).astype(y.dtype)
    return intercept

  def run(adapters, fn, use_mode):
    """``fn(params)`` with the adapters applied to the current base."""
    check_adapters(adapters)
    params = current_base()
    if use_mode == "merge":
      return fn(merge_into(params, adapters))
    with nn.intercept_methods(interceptor(adapters)):
      return fn(params)

  def make_functions(use_mode):
    base_lp = model.log_prob
    if isinstance(base_lp, SplitLogProb):
      log_prob = SplitLogProb(
          prepare=lambda a, x: run(a, lambda p: base_lp.prepare(p, x), use_mode),
          apply=lambda a, prep, x: run(a, lambda p: base_lp.apply(p, prep, x),
                                       use_mode))
    else:
      def log_prob(adapters, x):
        return run(adapters, lambda p: base_lp(p, x), use_mode)

    def sample(adapters, key, n):
      return run(adapters, lambda p: model.sample(p, key, n), use_mode)

    return log_prob, sample

  if mode != "merge":
    found = _low_rank_hits(model, base_params, init, interceptor)
    missing = [t.path for t in leaves if t.path not in found]
    if missing and mode == "low_rank":
      raise ValueError(
          "mode='low_rank' needs every adapted kernel used by a flax.linen.Dense "
          f"layer in log_prob and sample; not found: "
          f"{', '.join('/'.join(p) for p in missing[:5])}. Use mode='merge'")
    mode = "merge" if missing else "low_rank"
  log_prob, sample = make_functions(mode)

  @contextlib.contextmanager
  def with_base(params) -> Iterator[None]:
    if jax.tree.structure(params) != base_def:
      raise ValueError("with_base: params must have the structure of base_params")
    shapes = [tuple(np.shape(x)) for x in jax.tree.leaves(params)]
    if shapes != base_shapes:
      bad = next(i for i, (s, b) in enumerate(zip(shapes, base_shapes)) if s != b)
      raise ValueError(f"with_base: leaf {bad} of params has shape {shapes[bad]}, "
                       f"base_params' has {base_shapes[bad]}")
    token = _BOUND.set(_BOUND.get() + ((owner, params),))
    try:
      yield
    finally:
      _BOUND.reset(token)

  def jit(fn: Callable, static_argnums: int | Sequence[int] = (),
          donate_argnums: int | Sequence[int] = (), **jit_kwargs) -> Callable:
    call = frozen_lib.jit(fn, frozen_lib.Frozen(base_params, with_base),
                          static_argnums=static_argnums,
                          donate_argnums=donate_argnums, **jit_kwargs)
    call.__wrapped__ = fn
    return call

  def merge(adapters) -> Params:
    check_adapters(adapters)
    return merge_into(current_base(), adapters)

  lora = GenerativeModel(init=init, log_prob=log_prob, sample=sample,
                         event_shape=model.event_shape, dtype=model.dtype)
  return LoraModel(model=lora, base_params=base_params, rank=rank, scale=scale,
                   mode=mode, targets=leaves, merge=merge, with_base=with_base,
                   jit=jit)


def _low_rank_hits(model, base_params, init, interceptor) -> set:
  """Paths of the adapted kernels that ``nn.Dense`` layers use in both
  ``log_prob`` and ``sample`` (traced for shapes only)."""
  adapters = jax.eval_shape(init, jax.random.key(0))
  x = jax.ShapeDtypeStruct((1,) + tuple(model.event_shape), model.dtype)
  found = []
  for trace in (lambda p, x: model.log_prob(p, x),
                lambda p, x: model.sample(p, jax.random.key(0), 1)):
    hits = set()

    def traced(p, a, x, trace=trace, hits=hits):
      with nn.intercept_methods(interceptor(a, hits)):
        return trace(p, x)

    try:
      jax.eval_shape(traced, base_params, adapters, x)
    except Exception:  # noqa: BLE001 - a model these shapes cannot trace
      return set()
    found.append(hits)
  return found[0] & found[1]
