"""Small PNG charts for materialization metadata (Agg backend: no display needed)."""

from __future__ import annotations

import io

import numpy as np
import polars as pl

RECALL_KS = (1, 5, 10)
DIRECTIONS = (("t2i", "text→image"), ("i2t", "image→text"))


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def recall_bars(by_language: pl.DataFrame, title: str) -> bytes:
    """Grouped bars of R@1/5/10 per language, one panel per direction; `by_language` has the columns of
    `core.report.recall_by_language` (`language`, `t2i R@1`, …, `i2t R@10`)."""
    plt = _pyplot()
    languages = by_language["language"].to_list()
    positions = np.arange(len(languages))
    width = 0.8 / len(RECALL_KS)
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for axis, (prefix, direction) in zip(axes, DIRECTIONS):
        for offset, k in enumerate(RECALL_KS):
            values = by_language[f"{prefix} R@{k}"].fill_null(0.0).to_numpy()
            axis.bar(positions + offset * width, values, width, label=f"R@{k}")
        axis.set_xticks(positions + width, languages)
        axis.set_title(f"{title}: {direction}", fontsize=10)
        axis.set_ylim(0, 1)
    axes[0].set_ylabel("recall")
    axes[0].legend(fontsize=8)
    return _png(figure)


def loss_curve(losses: list[float], title: str) -> bytes:
    """Training loss per epoch."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.plot(np.arange(1, len(losses) + 1), losses, marker="o", markersize=3)
    axis.set_xlabel("epoch")
    axis.set_ylabel("mean training loss")
    axis.set_title(title, fontsize=10)
    return _png(figure)
