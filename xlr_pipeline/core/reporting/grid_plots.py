"""The grid report's figures (PNG): zero-shot R@1 per language of the main encoders' trained systems (score
ensembles left to the second figure and the report's tables), and every system's zero-shot mean R@1 and R@10
with their CIs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xlr_pipeline.core.experiments.comparisons import GridAnalysis, system_label
from xlr_pipeline.core.experiments.grid import ENSEMBLE_PREFIX


def per_language_r1(analysis: GridAnalysis, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [
        s
        for s in analysis.systems
        if s[2:] == (analysis.main_text_model, analysis.main_image_model)
        and s[0] != "random_init"
        and not s[1].startswith(ENSEMBLE_PREFIX)
    ]
    languages = analysis.zero_shot
    figure, axis = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / max(len(main), 1)
    for offset, system in enumerate(main):
        axis.bar(
            np.arange(len(languages)) + offset * width,
            analysis.r1_by_language[system],
            width,
            label=f"{system[0]} / {system[1]}",
        )
    axis.set_xticks(np.arange(len(languages)) + width * (len(main) - 1) / 2, languages)
    axis.set_ylabel("text→image R@1 (mean over seeds)")
    axis.legend(ncol=4, fontsize=7)
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def mean_recall(analysis: GridAnalysis, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems, estimates = analysis.systems, analysis.estimates
    figure, axes = plt.subplots(1, 2, figsize=(12, max(4.5, 0.28 * len(systems))))
    for axis, key, name in ((axes[0], "r1", "R@1"), (axes[1], "r10", "R@10")):
        means = [estimates[s][key].mean for s in systems]
        errors = [
            [estimates[s][key].mean - estimates[s][key].low for s in systems],
            [estimates[s][key].high - estimates[s][key].mean for s in systems],
        ]
        axis.barh([system_label(s, analysis.main_image_model) for s in systems], means, xerr=errors, capsize=3)
        axis.set_xlabel(f"zero-shot mean text→image {name} (95% CI)")
        axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
