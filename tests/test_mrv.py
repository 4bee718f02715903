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


# ------------------------------------------------------------------ property-based (hypothesis)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_rank = st.one_of(st.none(), st.integers(1, 10**6))
_tables = st.integers(1, 6).flatmap(lambda k: st.lists(st.lists(_rank, min_size=k, max_size=k), min_size=1, max_size=30))


@settings(max_examples=80, deadline=None)
@given(_tables, st.sampled_from(["variance", "std"]))
def test_any_rank_table_matches_the_direct_computation(rows, variant):
    result = compute_mrv(rows, variant)
    expected = _naive_mrv(rows, variant)
    if math.isnan(expected):
        assert math.isnan(result["mrv"]) and result["num_instances"] == 0
    else:
        assert result["mrv"] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert result["num_instances"] + result["num_excluded"] == len(rows)


@settings(max_examples=50, deadline=None)
@given(_tables, st.randoms(use_true_random=False), st.integers(0, 1000))
def test_language_order_and_a_shift_of_every_rank_change_nothing(rows, rnd, shift):
    order = list(range(len(rows[0])))
    rnd.shuffle(order)
    permuted = [[row[i] for i in order] for row in rows]
    shifted = [[None if v is None else v + shift for v in row] for row in rows]
    base = compute_mrv(rows)["mrv"]
    for other in (permuted, shifted):
        value = compute_mrv(other)["mrv"]
        assert (math.isnan(base) and math.isnan(value)) or value == pytest.approx(base, rel=1e-9, abs=1e-6)


@settings(max_examples=50, deadline=None)
@given(_tables, st.data())
def test_an_invalid_entry_anywhere_is_a_clear_error(rows, data):
    bad = data.draw(st.sampled_from([0, -3, 1.5, math.inf, "1", True, [1]]))
    row = data.draw(st.integers(0, len(rows) - 1))
    column = data.draw(st.integers(0, len(rows[0]) - 1))
    rows = [list(r) for r in rows]
    rows[row][column] = bad
    with pytest.raises((ValueError, TypeError), match=r"rank|number|ranks"):
        compute_mrv(rows)
