"""Plots of BaNEL runs (matplotlib, imported lazily; files or notebook axes)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def _plt():
  import matplotlib.pyplot as plt  # lazy: the core library never needs it
  return plt


def new_axes(figsize=(6, 4), nrows: int = 1, ncols: int = 1):
  """``(figure, axes)`` of a new figure: one panel, or a grid of
  ``nrows x ncols`` (``axes`` then an array)."""
  return _plt().subplots(nrows, ncols, figsize=figsize, squeeze=nrows * ncols == 1)


def save_figure(fig, path, dpi: int = 110) -> None:
  """Saves ``fig`` to ``path`` (tight layout) and closes it, so that many runs
  in one process do not keep their figures."""
  plt = _plt()
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)


def plot_success_vs_nre(runs: Mapping[str, Sequence[dict]], ax=None, *,
                        log_y: bool = False, title: str | None = None):
  """Success rate against NRE, one line per seed, one colour per run.

  Args:
    runs: ``{label: history}`` where ``history`` is a run's list of round records
      (each with ``"nre"`` per seed and, on evaluated rounds, ``"success_rate"``
      and ``"success_ci"`` per seed).
    ax: axes to draw on (a new figure when ``None``).
    log_y: log-scale success axis (for rare-success tasks).
    title: optional title.

  Returns:
    The axes.
  """
  plt = _plt()
  if ax is None:
    _, ax = plt.subplots(figsize=(6, 4))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, (label, history) in enumerate(runs.items()):
    recs = [h for h in history if "success_rate" in h]
    nre = np.array([h["nre"] for h in recs], float)
    rate = np.array([h["success_rate"] for h in recs], float)
    ci = np.array([h["success_ci"] for h in recs], float)
    c = colors[i % len(colors)]
    for s in range(rate.shape[1]):
      ax.plot(nre[:, s], rate[:, s], color=c, alpha=0.8, marker=".",
              label=label if s == 0 else None)
      ax.fill_between(nre[:, s], ci[:, s, 0], ci[:, s, 1], color=c, alpha=0.08)
  ax.set_xlabel("reward evaluations spent on learning (NRE)")
  ax.set_ylabel("success rate (95% Clopper-Pearson band)")
  if log_y:
    ax.set_yscale("log")
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  return ax


def plot_toy_rounds(centres: np.ndarray, snapshots: Sequence[dict],
                    rounds: Sequence[int], targets: Sequence[int], *,
                    title: str | None = None):
  """The paper's 1-D figure: prior, failure model and posterior, round by round.

  Args:
    centres: ``[K]`` bin centres.
    snapshots: per round ``r`` (index = round), a dict of pmfs ``prior``,
      ``failure``, ``posterior``, ``proposal`` (``[K]`` each), one seed.
    rounds: which rounds to draw (one panel each).
    targets: indices of the rewarded bins (marked).
    title: optional figure title.

  Returns:
    The figure.
  """
  plt = _plt()
  rounds = [r for r in rounds if 0 <= r < len(snapshots)]
  fig, axes = plt.subplots(1, len(rounds), figsize=(3.2 * len(rounds), 3),
                           sharey=True, squeeze=False)
  width = float(centres[1] - centres[0])
  for ax, r in zip(axes[0], rounds):
    snap = snapshots[r]
    ax.bar(centres, snap["prior"], width=width, color="0.8", label="prior $p_0$")
    ax.bar(centres, snap["posterior"], width=width * 0.6, color="tab:blue",
           alpha=0.8, label="exploration posterior")
    if r > 0:
      ax.plot(centres, snap["failure"], color="tab:red", lw=1.2,
              label="failure model $p_\\phi$")
      ax.plot(centres, snap["proposal"], color="tab:green", lw=1, ls="--",
              label="proposal")
    for t in targets:
      ax.axvline(centres[t], color="k", ls=":", lw=0.8)
    ax.set_title(f"round {r}")
    ax.set_xlabel("x")
  axes[0][0].set_ylabel("probability")
  axes[0][-1].legend(fontsize=7, loc="upper right")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig
