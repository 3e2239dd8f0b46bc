"""MNIST 0-to-6, before post-training: the reward, the zeros model, its rate.

Trains (or loads) the shipped classifier and pretrained zeros model of
:mod:`banel_jax.tasks.mnist`, and measures

* the classifier's held-out accuracy and its six-probabilities on held-out
  digits (``mnist_classifier_verdicts.png``: held-out sixes and non-sixes with
  the classifier's p(6) and the reward it gives);
* the zeros model's NLL in bits per image on training and held-out zeros
  (``mnist_zeros_samples.png``: samples next to held-out zeros);
* the pretrained success rate: the fraction of ``--samples`` samples of the
  zeros model that the oracle rewards, with its 95% Clopper-Pearson interval,
  and the rates the same samples would have at other thresholds
  (``mnist_pretrained_hits.png``: the rewarded samples, or the samples of
  highest p(6) when there are few).

Everything measured goes to ``mnist_pretrain.json`` next to this script.

Usage (from the repository root, about 5 minutes on 2 CPU cores)::

  JAX_PLATFORMS=cpu python research/mnist_pretrain.py [--retrain] [--samples N]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys
import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

import banel_jax as bj  # pylint: disable=wrong-import-position
from banel_jax.tasks import mnist  # pylint: disable=wrong-import-position

HERE = pathlib.Path(__file__).resolve().parent
THRESHOLD_CHOICE = (
    "The first design rewarded p(6) >= 0.9; a pilot of 50,000 samples of the "
    "pretrained model (other PRNG keys than this run) found that too frequent "
    "(4.2e-3, and 1.2e-3 at 0.99, above the aimed 1e-5..1e-3), so the "
    "threshold was raised to 0.999 (3.6e-4 in the pilot). The pretraining was "
    "not changed. rates_at_other_thresholds gives this run's rate at each "
    "threshold.")
OTHER_THRESHOLDS = (0.5, 0.9, 0.99, 0.995, 0.999, 0.9999)


def shown(p: float) -> str:
  """``p`` rounded down to 4 decimals, so that a value shown as 0.9990 passes."""
  return f"{np.floor(p * 1e4) / 1e4:.4f}"


def image_grid(images, titles, colors, ncols, path, suptitle):
  """Saves binary images in a grid, each titled and framed in its colour."""
  n = len(images)
  nrows = -(-n // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 0.9, nrows * 1.05))
  for ax in np.ravel(axes):
    ax.axis("off")
  for ax, img, title, color in zip(np.ravel(axes), images, titles, colors):
    ax.imshow(img, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=6, color=color, pad=2)
    ax.axis("on")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
      spine.set_edgecolor(color)
      spine.set_linewidth(2)
  fig.suptitle(suptitle, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)


def classifier_section(splits, retrain: bool) -> tuple:
  params, meta = mnist.load_classifier(retrain=retrain)
  record = mnist.evaluate_classifier(params, splits)
  oracle = mnist.make_six_oracle(params)
  p6 = oracle.six_probabilities(mnist.to_samples(splits.test_images))
  six = splits.test_labels == mnist.SIX
  verdict = mnist.six_reward(p6)
  out = {
      **record,
      "train_seconds": meta["record"]["train_seconds"],
      "config": meta["config"],
      "threshold": mnist.SIX_THRESHOLD,
      "held_out_sixes_rewarded": float(verdict[six].mean()),
      "held_out_non_sixes_rewarded": float(verdict[~six].mean()),
      "held_out_non_sixes_rewarded_count": int(verdict[~six].sum()),
      "held_out_sixes_p6_quantiles_5_25_50": np.quantile(p6[six], [0.05, 0.25, 0.5]).tolist(),
      "held_out_non_sixes_p6_max": float(p6[~six].max()),
  }
  print("classifier", json.dumps(out), flush=True)

  # Held-out sixes (the 40 first), then 4 non-sixes of each digit, then the 8
  # non-sixes of highest p(6).
  six_idx = np.flatnonzero(six)[:40]
  other_idx = np.concatenate([np.flatnonzero(splits.test_labels == d)[:4]
                              for d in range(10) if d != mnist.SIX])
  top_idx = np.flatnonzero(~six)[np.argsort(-p6[~six])[:8]]
  idx = np.concatenate([six_idx, other_idx, top_idx])
  titles = [f"{splits.test_labels[i]}: {shown(p6[i])}" for i in idx]
  colors = ["green" if verdict[i] else "red" for i in idx]
  image_grid(splits.test_images[idx], titles, colors, 12,
             HERE / "mnist_classifier_verdicts.png",
             f"held-out digits (label: classifier p(6)); green = reward 1 "
             f"(p6 >= {mnist.SIX_THRESHOLD}), red = reward 0. First 40: sixes; "
             f"then 4 of each other digit; last 8: non-sixes of highest p6")
  return params, oracle, out


def zeros_section(splits, retrain: bool, key) -> tuple:
  model, params, meta = mnist.load_zeros_model(retrain=retrain)
  out = {
      "train_nll_bits": mnist.nll_bits_per_image(model, params, splits.digit(0)),
      "held_out_nll_bits": mnist.nll_bits_per_image(
          model, params, splits.digit(0, held_out=True)),
      "held_out_nll_bits_other_digits": {
          str(d): mnist.nll_bits_per_image(model, params, splits.digit(d, True))
          for d in range(1, 10)},
      "train_seconds": meta["record"]["train_seconds"],
      "train_images_after_shift_augmentation": meta["record"]["train_images"],
      "config": meta["config"],
  }
  print("zeros model", json.dumps(out), flush=True)
  samples = mnist.to_images(model.sample(params, key, 60))
  real = splits.digit(0, held_out=True)[:12]
  image_grid(np.concatenate([real, samples]),
             ["held-out 0"] * 12 + ["sample"] * 60,
             ["blue"] * 12 + ["black"] * 60, 12, HERE / "mnist_zeros_samples.png",
             "first row: held-out zeros; rows 2-6: samples of the pretrained "
             "zeros model")
  return model, params, out


def rate_section(model, params, oracle, num_samples: int, batch: int, key) -> dict:
  sample = jax.jit(model.sample, static_argnums=2)
  p6_all, kept = [], []
  start = time.perf_counter()
  sample_seconds = 0.0
  for i in range(-(-num_samples // batch)):
    n = min(batch, num_samples - i * batch)
    t = time.perf_counter()
    x = np.asarray(sample(params, jax.random.fold_in(key, i), batch))[:n]
    sample_seconds += time.perf_counter() - t
    p6 = oracle.six_probabilities(x)
    p6_all.append(p6)
    top = np.argsort(-p6)[:64]
    kept.append((p6[top], x[top]))
  seconds = time.perf_counter() - start
  p6 = np.concatenate(p6_all)
  rewards = mnist.six_reward(p6)
  est = bj.clopper_pearson(int(rewards.sum()), int(rewards.size))
  others = {}
  for t in OTHER_THRESHOLDS:
    e = bj.clopper_pearson(int((p6 >= t).sum()), int(p6.size))
    others[str(t)] = {"successes": e.successes, "rate": e.rate, "low": e.low,
                      "high": e.high}
  out = {"samples": int(p6.size), "successes": est.successes, "rate": est.rate,
         "ci95_low": est.low, "ci95_high": est.high,
         "threshold": mnist.SIX_THRESHOLD, "rates_at_other_thresholds": others,
         "p6_quantiles_50_99_999": np.quantile(p6, [0.5, 0.99, 0.999]).tolist(),
         "seconds": seconds, "sampling_seconds": sample_seconds,
         "classifier_seconds": seconds - sample_seconds}
  print("rate", json.dumps(out), flush=True)

  top_p6 = np.concatenate([k[0] for k in kept])
  top_x = np.concatenate([k[1] for k in kept])
  order = np.argsort(-top_p6)[:60]
  image_grid(mnist.to_images(top_x[order]), [shown(v) for v in top_p6[order]],
             ["green" if v >= mnist.SIX_THRESHOLD else "red" for v in top_p6[order]],
             12, HERE / "mnist_pretrained_hits.png",
             f"the 60 of {p6.size} pretrained samples with the highest p(6); "
             f"green = rewarded (p6 >= {mnist.SIX_THRESHOLD})")
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--retrain", action="store_true",
                      help="retrain and overwrite the shipped classifier and model")
  parser.add_argument("--samples", type=int, default=200_000)
  parser.add_argument("--batch", type=int, default=10_000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  key = jax.random.key(args.seed)
  grid_key, rate_key = jax.random.split(key)
  start = time.perf_counter()
  splits = mnist.load_splits()
  results = {"data": {**mnist.DATA_RECORD,
                      "train_images": int(splits.train_images.shape[0]),
                      "held_out_images": int(splits.test_images.shape[0]),
                      "train_ink_fraction": float(splits.train_images.mean())},
             "command": shlex.join(["python", "research/mnist_pretrain.py",
                                    *sys.argv[1:]]),
             "jax_backend": jax.default_backend(), "seed": args.seed}
  _, oracle, results["classifier"] = classifier_section(splits, args.retrain)
  model, params, results["zeros_model"] = zeros_section(splits, args.retrain,
                                                        grid_key)
  results["threshold_choice"] = THRESHOLD_CHOICE
  results["pretrained_rate"] = rate_section(model, params, oracle, args.samples,
                                            args.batch, rate_key)
  results["total_seconds"] = time.perf_counter() - start
  with open(HERE / "mnist_pretrain.json", "w") as f:
    json.dump(results, f, indent=2)
    f.write("\n")
  print(f"wrote {HERE / 'mnist_pretrain.json'}")


if __name__ == "__main__":
  main()
