"""Small tar shards written in the test: the tiny coloured-shapes dataset of conftest.py as shards."""

from __future__ import annotations

import io
from pathlib import Path

from conftest import tiny_ccr_dataset

from modeling_ccr.shards import ShardWriter


def encode(image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format)
    return buffer.getvalue()


def write_tiny_shards(folder: Path, samples_per_shard: int = 3, copies: int = 1) -> list[str]:
    """The 12 tiny images (``copies`` times, keys ``<copy>-<colour>-<shape>``) as PNG + json shards."""
    dataset = tiny_ccr_dataset()
    with ShardWriter(str(folder), samples_per_shard) as writer:
        for copy in range(copies):
            for row in dataset:
                writer.write(f"{copy}-{row['image_id']}", encode(row["image"]), row["captions"], extension="png")
    return writer.paths
