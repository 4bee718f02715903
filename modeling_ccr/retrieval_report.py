"""Human-readable retrieval results: the printed table (drawn by ``results``) and a PNG figure.

The figure has three panels: Recall@K per language for TR and IR (grouped bars), and the distribution
of the per-instance standard deviation of ranks across languages (what MRV summarises), for TR and IR; with
a ``mixed`` block in the metrics a fourth: each language's share of the top-10 results in the pool of all
captions of all languages, against its share of the pool (even for a model without a language offset).
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
    mixed = metrics.get("mixed")
    panels = 4 if mixed else 3
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2), gridspec_kw={"width_ratios": [1.2, 1.2, 1, 1][:panels]})
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
    if mixed:
        _language_share_panel(axes[3], mixed)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _language_share_panel(ax: Any, mixed: dict[str, Any]) -> None:
    """Bars: each language's share of all top-k results in the mixed pool; marks: its share of the pool."""
    share = mixed["language_share"]
    languages = list(share["top"])
    x = np.arange(len(languages))
    ax.bar(x, [share["top"][lang] or 0.0 for lang in languages], 0.6, label=f"share of the top-{share['top_k']}")
    ax.scatter(x, [share["pool"][lang] or 0.0 for lang in languages], color="black", marker="_", s=400, zorder=3,
               label="share of the pool (even)")
    ax.set_xticks(x, languages, rotation=45 if len(languages) > 8 else 0)
    ax.set_ylabel("% of results")
    recall = mixed["recall"].get("R@1")
    ax.set_title(f"mixed-language pool: top-{share['top_k']} by language"
                 + ("" if recall is None else f"\n(R@1 over all captions {recall:.1f})"))
    ax.legend(fontsize=8)
