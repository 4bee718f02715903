"""Counting, for every query, the gallery scores at or above its gold score (``>=``: ties count against the
gold, see ``ranking.rank_from_counts``): the inner loop of retrieval evaluation, on CPU at close to memory speed.

numpy compares a cache-sized block at SIMD speed, but summing booleans is slow (a cast per element). So
each comparison writes into a zero-padded boolean buffer whose segments start on 8-byte boundaries, and the
Trues are added as uint64 words: eight byte-lanes at once, at most 255 words per partial sum so that no lane
carries into the next (SIMD within a register). Row ranges run in threads; numpy releases the GIL while it
compares and adds. NaN cannot be ordered, so a block holding one is reported (checked on the block's max,
which NaN propagates through, while the block is still in cache).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

CACHE_ELEMENTS = 1 << 19  # scores compared at once per thread (2 MiB of float32), so the buffers stay in cache
_LANE_MAX = 255  # a uint8 lane of a uint64 sum holds at most 255 before it would carry into the next lane
_MAX_THREADS = 8
_COMPARE_BUFSIZE = 16  # see SegmentLayout.compare


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class SegmentLayout:
    """Where each column segment ``[lo, hi)`` of a score row goes in a boolean buffer row.

    Segments are 8-byte aligned and zero-padded, and split into partial sums of at most 255 words.
    ``uniform`` is the common width when the segments tile the row contiguously with equal widths that are
    a multiple of 8: then the buffer has the row's own layout and one reshaped comparison fills it.
    """

    bounds: tuple[tuple[int, int], ...]
    offsets: tuple[int, ...]
    part_starts: np.ndarray
    first_part: np.ndarray
    words: int
    uniform: int | None

    @classmethod
    def of(cls, bounds: Sequence[tuple[int, int]]) -> SegmentLayout:
        bounds = tuple((int(lo), int(hi)) for lo, hi in bounds)
        offsets, part_starts, first_part, word = [], [], [], 0
        for lo, hi in bounds:
            if hi < lo:
                raise ValueError(f"segment [{lo}, {hi}) is reversed")
            words = max(1, _cdiv(hi - lo, 8))
            offsets.append(word * 8)
            first_part.append(len(part_starts))
            part_starts.extend(range(word, word + words, _LANE_MAX))
            word += words
        width = bounds[0][1] - bounds[0][0] if bounds else 0
        uniform = width if (
            width > 0 and width % 8 == 0
            and all(lo == k * width and hi == lo + width for k, (lo, hi) in enumerate(bounds))
        ) else None
        return cls(bounds, tuple(offsets), np.asarray(part_starts), np.asarray(first_part), word, uniform)

    def buffer(self, rows: int) -> np.ndarray:
        return np.zeros((rows, self.words * 8), dtype=bool)

    def compare(self, block: np.ndarray, thresholds: np.ndarray, out: np.ndarray) -> None:
        """``out`` segment k of row r = ``block[r, lo_k:hi_k] >= thresholds[r, k]``."""
        rows = block.shape[0]
        # numpy buffers a broadcast operand across rows shorter than its buffer size (8192 elements), which
        # makes this comparison 2-3x slower; a small buffer size (thread-local) keeps it on the direct path.
        default_bufsize = np.setbufsize(_COMPARE_BUFSIZE)
        try:
            if self.uniform is not None:
                segments = len(self.bounds)
                np.greater_equal(
                    block.reshape(rows * segments, self.uniform),
                    thresholds.reshape(rows * segments, 1),
                    out=out.reshape(rows * segments, self.uniform),
                )
                return
            for k, (lo, hi) in enumerate(self.bounds):
                np.greater_equal(
                    block[:, lo:hi], thresholds[:, k, None], out=out[:, self.offsets[k] : self.offsets[k] + hi - lo]
                )
        finally:
            np.setbufsize(default_bufsize)

    def count(self, buffer: np.ndarray) -> np.ndarray:
        """(rows, segments) number of Trues per segment of each buffer row."""
        rows = buffer.shape[0]
        partial = np.add.reduceat(buffer.view(np.uint64), self.part_starts, axis=1)
        lanes = partial.view(np.uint8).reshape(rows, -1, 8).sum(axis=2, dtype=np.int64)
        if len(self.first_part) == lanes.shape[1]:
            return lanes
        return np.add.reduceat(lanes, self.first_part, axis=1)


def _threads(num_rows: int, num_cols: int) -> int:
    """As many threads as torch uses (torch.set_num_threads / OMP_NUM_THREADS), while each gets at least a
    row and a block's worth of scores: below that, handing work over costs more than it saves."""
    import torch

    return max(1, min(_MAX_THREADS, torch.get_num_threads(), num_rows, num_rows * num_cols // CACHE_ELEMENTS))


_pool: tuple[int, ThreadPoolExecutor] | None = None


def _thread_pool() -> ThreadPoolExecutor:
    """One pool per process, kept between calls (starting threads costs as much as counting a small gallery);
    a forked child makes its own, since the parent's threads do not exist there."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(_MAX_THREADS, thread_name_prefix="ccr-rank-count"))
    return _pool[1]


def _run_row_ranges(work: Callable[[int, int], Any], num_rows: int, num_cols: int) -> list[Any]:
    """``work(start, stop)`` over contiguous row ranges, one per thread."""
    workers = _threads(num_rows, num_cols)
    if workers == 1:
        return [work(0, num_rows)]
    edges = np.linspace(0, num_rows, workers + 1).astype(int).tolist()
    # The calling thread takes the first range itself: were it to sleep while waiting, the scheduler would
    # often wake the helpers on its own, now idle, core and run them one after the other.
    helpers = [_thread_pool().submit(work, s, e) for s, e in zip(edges[1:-1], edges[2:])]
    first = work(edges[0], edges[1])
    return [first] + [helper.result() for helper in helpers]


def _rows_per_block(num_cols: int) -> int:
    return max(1, min(_LANE_MAX, CACHE_ELEMENTS // max(1, num_cols)))


def count_at_or_above(
    values: np.ndarray,
    row_thresholds: np.ndarray,
    bounds: Sequence[tuple[int, int]],
    col_thresholds: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Count scores at or above thresholds (``>=``), reading each cache-sized block of rows once.

    - ``row_thresholds`` (R, S): ``rows[r, s]`` = entries of ``values[r, lo_s:hi_s]`` >= ``row_thresholds[r, s]``
      (TR: each image row against its gold caption's score, one segment per language);
    - ``col_thresholds`` (C,) if given: ``cols[c]`` = entries of ``values[:, c]`` >= ``col_thresholds[c]``
      (IR: each caption column against its image's score).

    Returns ``(rows, cols, has_nan)``; counts next to a NaN are meaningless, so callers raise on ``has_nan``.
    """
    num_rows, num_cols = values.shape
    layout = SegmentLayout.of(bounds)
    rows_out = np.empty((num_rows, len(layout.bounds)), dtype=np.int64)
    step = _rows_per_block(num_cols)
    dtype = values.dtype
    row_thresholds = np.asarray(row_thresholds, dtype=dtype)
    if col_thresholds is not None:
        col_thresholds = np.asarray(col_thresholds, dtype=dtype)
        col_words = _cdiv(num_cols, 8)

    def work(start: int, stop: int) -> tuple[np.ndarray | None, bool]:
        row_buffer = layout.buffer(min(step, stop - start))
        if col_thresholds is not None:
            col_buffer = np.zeros((row_buffer.shape[0], col_words * 8), dtype=bool)
            word_sums = np.zeros(col_words, dtype=np.uint64)  # 8 byte-lanes per word: at most 255 rows at a time
            cols, rows_in_sums = np.zeros(col_words * 8, dtype=np.int64), 0
        has_nan = False
        for s in range(start, stop, step):
            e = min(s + step, stop)
            block = values[s:e]
            if col_thresholds is not None:
                if rows_in_sums + e - s > _LANE_MAX:
                    cols += word_sums.view(np.uint8)
                    word_sums[:], rows_in_sums = 0, 0
                np.greater_equal(block, col_thresholds, out=col_buffer[: e - s, :num_cols])
                word_sums += col_buffer[: e - s].view(np.uint64).sum(axis=0)
                rows_in_sums += e - s
            layout.compare(block, row_thresholds[s:e], row_buffer[: e - s])
            rows_out[s:e] = layout.count(row_buffer[: e - s])
            has_nan |= bool(np.isnan(block.max())) if block.size else False
        if col_thresholds is None:
            return None, has_nan
        cols += word_sums.view(np.uint8)
        return cols[:num_cols], has_nan

    parts = _run_row_ranges(work, num_rows, num_cols) if num_rows else [(None, False)]
    has_nan = any(nan for _, nan in parts)
    if col_thresholds is None:
        return rows_out, None, has_nan
    cols_out = np.zeros(num_cols, dtype=np.int64)
    for cols, _ in parts:
        if cols is not None:
            cols_out += cols
    return rows_out, cols_out, has_nan
