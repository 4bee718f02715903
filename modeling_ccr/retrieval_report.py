"""Human-readable retrieval results: the printed table (drawn by ``results``) and a PNG figure.

The figure has three panels: Recall@K per language for TR and IR (grouped bars), and the distribution
of the per-instance standard deviation of ranks across languages (what MRV summarises), for TR and IR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .mrv_core import per_instance_spread
from .ranking import RetrievalRanks
from .results import RetrievalResults


def format_table(metrics: dict[str, Any] | RetrievalResults) -> str:
    """Recall@K per language (rows) and direction (columns), then averages, mean recall and MRV."""
    results = metrics if isinstance(metrics, RetrievalResults) else RetrievalResults.from_json(metrics)
    return results.summary_text()


def save_report_plot(metrics: dict[str, Any], ranks: RetrievalRanks, path: str | Path, title: str | None = None) -> Path:
    """Write the PNG (matplotlib, Agg backend: no display needed) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    languages = metrics["languages"]
    ks = list(next(iter(metrics["recall"]["TR"].values())).keys())
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1.2, 1.2, 1]})
    x = np.arange(len(languages))
    width = 0.8 / len(ks)
    for ax, direction in zip(axes[:2], ("TR", "IR")):
        for j, k in enumerate(ks):
            values = [metrics["recall"][direction][lang][k] for lang in languages]
            ax.bar(x + (j - (len(ks) - 1) / 2) * width, values, width, label=k)
        ax.set_xticks(x, languages, rotation=45 if len(languages) > 8 else 0)
        ax.set_ylim(0, 100)
        ax.set_ylabel("recall (%)")
        name = "image → text" if direction == "TR" else "text → image"
        ax.set_title(f"{direction} ({name}) per language")
        ax.legend(fontsize=8)

    ax = axes[2]
    spreads = {}
    for direction, matrix in (("TR", ranks.tr_ranks), ("IR", ranks.ir_rank_matrix())):
        spread, counted = per_instance_spread(matrix, "std")
        spreads[direction] = spread[counted]
    if any(len(v) for v in spreads.values()):
        top = max(float(v.max()) for v in spreads.values() if len(v))
        bins = np.linspace(0, max(top, 1.0), 30)
        for direction, values in spreads.items():
            if len(values):
                ax.hist(values, bins=bins, alpha=0.6, label=f"{direction} (n={len(values)})")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "needs two or more languages", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("std of an instance's ranks across languages")
    ax.set_ylabel("instances")
    mrv = metrics["mrv"]
    ax.set_title(f"rank spread; MRV TR {mrv['TR'] if mrv['TR'] is None else round(mrv['TR'], 2)}, "
                 f"IR {mrv['IR'] if mrv['IR'] is None else round(mrv['IR'], 2)}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
