"""MRV core: values against a direct per-row computation, missing languages, and clear errors."""

import math

import numpy as np
import pytest

from modeling_ccr.mrv_core import compute_mrv, mean_rank_variance, per_instance_spread, validate_ranks


def _naive_mrv(rows, variant="variance"):
    values = []
    for row in rows:
        present = [float(v) for v in row if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if len(present) < 2:
            continue
        mean = sum(present) / len(present)
        var = sum((v - mean) ** 2 for v in present) / len(present)
        values.append(math.sqrt(var) if variant == "std" else var)
    return sum(values) / len(values) if values else math.nan


def test_small_example_by_hand():
    result = compute_mrv([[1, 1, 1], [1, 3, None], [2, None, None]])
    assert result["mrv"] == pytest.approx(0.5)
    assert result["num_instances"] == 2
    assert result["num_excluded"] == 1
    assert result["excluded_indices"] == [2]
    assert mean_rank_variance([[1, 5]]) == pytest.approx(4.0)
    assert mean_rank_variance([[1, 5]], variant="std") == pytest.approx(2.0)


@pytest.mark.parametrize("variant", ["variance", "std"])
def test_random_ranks_with_missing_languages_match_naive(variant):
    rng = np.random.default_rng(0)
    ranks = rng.integers(1, 50, size=(200, 8)).astype(float)
    ranks[rng.random(ranks.shape) < 0.3] = np.nan
    rows = [[None if np.isnan(v) else int(v) for v in row] for row in ranks]
    expected = _naive_mrv(rows, variant)
    assert mean_rank_variance(ranks, variant) == pytest.approx(expected, rel=1e-12)
    assert mean_rank_variance(rows, variant) == pytest.approx(expected, rel=1e-12)
    spread, counted = per_instance_spread(ranks, variant)
    assert counted.sum() == sum(1 for row in rows if sum(v is not None for v in row) >= 2)
    assert np.isnan(spread[~counted]).all()


def test_identical_ranks_give_zero_and_all_single_language_gives_nan():
    assert mean_rank_variance([[4, 4, 4], [2, 2, None]]) == 0.0
    result = compute_mrv([[1, None], [None, 3]])
    assert math.isnan(result["mrv"]) and result["num_instances"] == 0 and result["num_excluded"] == 2


@pytest.mark.parametrize(
    "bad, message",
    [
        ([], "empty"),
        (np.zeros((0, 3)), "empty"),
        ([[1, 2], [3]], "row 1 has 1 entries"),
        ([[1, -2]], "not a valid rank"),
        ([[0, 2]], "not a valid rank"),
        ([[1.5, 2]], "not a valid rank"),
        ([[1, float("inf")]], "infinite"),
        (np.ones(3), "2-D"),
        ([[1, 2]], None),
    ],
)
def test_invalid_input_is_a_clear_error(bad, message):
    if message is None:
        validate_ranks(bad)
        return
    with pytest.raises(ValueError, match=message):
        validate_ranks(bad)


def test_type_errors_and_unknown_variant():
    with pytest.raises(TypeError, match="not a number"):
        validate_ranks([[1, "2"]])
    with pytest.raises(TypeError):
        validate_ranks("1 2 3")
    with pytest.raises(ValueError, match="variant"):
        mean_rank_variance([[1, 2]], variant="mean")
