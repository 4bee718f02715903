"""Mean Rank Variance (MRV): how consistently an instance is ranked across languages.

For every instance (an image with captions in K languages) take its retrieval rank in each language,
compute the population variance of those ranks, and average over instances. 0 means every language
ranks every instance identically. The authors' released code printed the mean *standard deviation*
instead; ``variant="std"`` gives that.

This file is the single implementation used by the package (``modeling_ccr.retrieval``) and by the
``evaluate`` module (``evaluate_metrics/mrv``, which ships this very file beside ``mrv.py``), so it
imports nothing but numpy and the standard library.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np

VARIANTS = ("variance", "std")


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, Real) and not isinstance(value, Integral) and math.isnan(value))


def _rows_from_sequences(ranks: Any) -> np.ndarray:
    """Turn a list of rows (None/NaN = missing language) into a float (N, K) array, checking the shape."""
    rows = list(ranks)
    if not rows:
        raise ValueError("ranks is empty: give one row per instance with its rank in each language")
    width = None
    out = []
    for row_index, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not hasattr(row, "__len__"):
            raise TypeError(f"ranks row {row_index} is {type(row).__name__}, expected a list of ranks (one per language)")
        values = list(row.tolist() if isinstance(row, np.ndarray) else row)
        if width is None:
            width = len(values)
        elif len(values) != width:
            raise ValueError(
                f"ranks row {row_index} has {len(values)} entries but row 0 has {width}: every row needs one entry per "
                "language; mark a missing language with None or NaN instead of leaving it out"
            )
        converted = []
        for column, value in enumerate(values):
            if _is_missing(value):
                converted.append(math.nan)
            elif isinstance(value, (bool, np.bool_)) or not isinstance(value, (Real, np.number)):
                raise TypeError(f"ranks[{row_index}][{column}] = {value!r} is not a number")
            else:
                converted.append(float(value))
        out.append(converted)
    if width == 0:
        raise ValueError("ranks rows are empty: give one entry per language")
    return np.asarray(out, dtype=np.float64)


def validate_ranks(ranks: Any) -> np.ndarray:
    """Check ``ranks`` and return it as a float64 (N, K) array with NaN where a language is missing.

    Accepts a 2-D numpy array (NaN = missing) or a sequence of equal-length rows (None or NaN = missing).
    Ranks are 1-based: every present entry must be a finite integer value >= 1.
    """
    if isinstance(ranks, np.ndarray) and ranks.dtype != object:
        if ranks.ndim != 2:
            raise ValueError(f"ranks must be 2-D (instances x languages), got shape {ranks.shape}")
        if ranks.size == 0:
            raise ValueError(f"ranks is empty (shape {ranks.shape}): give one row per instance, one column per language")
        if ranks.dtype == bool or not np.issubdtype(ranks.dtype, np.number):
            raise TypeError(f"ranks must hold numbers, got dtype {ranks.dtype}")
        array = ranks.astype(np.float64)
    else:
        if ranks is None or isinstance(ranks, (str, bytes)):
            raise TypeError("ranks must be a 2-D array or a list of rows of ranks")
        array = _rows_from_sequences(ranks)
    present = ~np.isnan(array)
    values = array[present]
    if not np.all(np.isfinite(values)):
        raise ValueError("ranks contains an infinite value; ranks are 1-based integers")
    bad = present & ((array < 1) | (array != np.round(array)))
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"ranks[{row}][{column}] = {array[row, column]:g} is not a valid rank: ranks are integers >= 1 "
            f"({int(bad.sum())} invalid entries in all)"
        )
    return array


def per_instance_spread(ranks: Any, variant: str = "variance") -> tuple[np.ndarray, np.ndarray]:
    """Per-instance population variance (or std) of the ranks over its present languages.

    Returns ``(spread, counted)``: ``spread`` is float (N,) with NaN for instances that have fewer than
    two languages, ``counted`` a bool (N,) mask of the instances that count.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    array = validate_ranks(ranks)
    present = ~np.isnan(array)
    n_present = present.sum(axis=1)
    counted = n_present >= 2
    filled = np.where(present, array, 0.0)
    safe_n = np.maximum(n_present, 1)
    mean = filled.sum(axis=1) / safe_n
    squared = np.where(present, (array - mean[:, None]) ** 2, 0.0)
    spread = squared.sum(axis=1) / safe_n
    if variant == "std":
        spread = np.sqrt(spread)
    spread = np.where(counted, spread, np.nan)
    return spread, counted


def compute_mrv(ranks: Any, variant: str = "variance") -> dict[str, Any]:
    """MRV with its bookkeeping.

    Returns ``{"mrv": float, "variant": str, "num_instances": int (counted), "num_excluded": int
    (fewer than two languages), "excluded_indices": list[int]}``. ``mrv`` is NaN when no instance counts.
    """
    spread, counted = per_instance_spread(ranks, variant)
    num = int(counted.sum())
    value = float(spread[counted].mean()) if num else math.nan
    excluded = np.flatnonzero(~counted).tolist()
    return {
        "mrv": value,
        "variant": variant,
        "num_instances": num,
        "num_excluded": len(excluded),
        "excluded_indices": excluded,
    }


def mean_rank_variance(ranks: Any, variant: str = "variance") -> float:
    """The MRV value alone (see :func:`compute_mrv`)."""
    return compute_mrv(ranks, variant)["mrv"]
