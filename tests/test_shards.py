"""Tar shards: patterns, reading and resuming by offset, the caption schema, truncated archives."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest
from _shard_helpers import encode, write_tiny_shards
from PIL import Image

from modeling_ccr.shards import (
    BadSample,
    ShardEnd,
    decode_image,
    expand_braces,
    expand_shards,
    is_shard_pattern,
    read_shard,
    sample_captions,
)


def _tar(path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return str(path)


def test_brace_patterns_expand_ranges_with_padding_and_alternatives():
    assert expand_braces("s/{00008..00011}.tar") == ["s/00008.tar", "s/00009.tar", "s/00010.tar", "s/00011.tar"]
    assert expand_braces("{en,de}/{1..2}.tar") == ["en/1.tar", "en/2.tar", "de/1.tar", "de/2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ValueError, match="empty range"):
        expand_braces("{5..3}.tar")


def test_expand_shards_names_a_missing_shard(tmp_path):
    paths = write_tiny_shards(tmp_path / "s", samples_per_shard=5)
    assert expand_shards(str(tmp_path / "s" / "{00000..00002}.tar")) == paths
    assert expand_shards(str(tmp_path / "s")) == paths
    assert expand_shards(str(tmp_path / "s" / "*.tar")) == paths
    with pytest.raises(FileNotFoundError, match="00003.tar"):
        expand_shards(str(tmp_path / "s" / "{00000..00003}.tar"))
    assert is_shard_pattern("shards/{00000..00099}.tar") and is_shard_pattern(str(tmp_path / "s"))
    assert not is_shard_pattern("data/train.jsonl")


def test_read_shard_groups_members_by_key_and_resumes_at_an_offset(tmp_path):
    path = write_tiny_shards(tmp_path, samples_per_shard=12)[0]
    entries = list(read_shard(path))
    assert entries[-1] == ShardEnd(truncated=False)
    samples = entries[:-1]
    assert len(samples) == 12 and all(set(files) == {"png", "json"} for _, _, files in samples)
    offset, key, _ = samples[5]
    resumed = list(read_shard(path, offset))[:-1]
    assert [k for _, k, _ in resumed] == [k for _, k, _ in samples[5:]]
    assert [o for o, _, _ in resumed] == [o for o, _, _ in samples[5:]]
    captions_only = list(read_shard(path, keep_images=False))[:-1]
    assert all(set(files) == {"json"} for _, _, files in captions_only)


@pytest.mark.parametrize("cut", ["in_data", "in_header", "end_marker"])
def test_a_truncated_shard_is_reported_after_its_last_whole_sample(tmp_path, cut):
    path = _tar(tmp_path / "t.tar", [(f"{i:03d}.txt", b"x" * 700) for i in range(4)])
    size = os.path.getsize(path)
    member = 512 + 1024  # header + 700 bytes padded to whole blocks
    keep = {"in_data": member + 512 + 100, "in_header": 2 * member + 200, "end_marker": 4 * member}[cut]
    assert keep < size
    with open(path, "r+b") as handle:
        handle.truncate(keep)
    entries = list(read_shard(path))
    end = entries[-1]
    assert isinstance(end, ShardEnd) and end.truncated
    whole = [key for _, key, _ in entries[:-1]]
    assert end.lost_key is not None and end.lost_key not in whole
    assert whole == [f"{i:03d}" for i in range(len(whole))]
    expected = {"in_data": ["000"], "in_header": ["000"], "end_marker": ["000", "001", "002"]}[cut]
    assert whole == expected  # a cut in sample 1's data keeps sample 0; a cut header loses the sample before it


def test_caption_schema_records_mapping_img2dataset_caption_and_txt():
    records = {"json": json.dumps({"captions": [{"language": "de", "text": " rot "}, {"language": "en", "text": "red"}]})}
    assert sample_captions(records, None, "k") == [{"language": "de", "text": "rot"}, {"language": "en", "text": "red"}]
    mapping = {"json": json.dumps({"captions": {"fr": ["rouge", "vermillon"], "cs": "červená"}})}
    assert sample_captions(mapping, None, "k") == [
        {"language": "fr", "text": "rouge"}, {"language": "fr", "text": "vermillon"}, {"language": "cs", "text": "červená"}
    ]
    img2dataset = {"json": json.dumps({"caption": "a cat", "url": "http://x", "status": "success"})}
    assert sample_captions(img2dataset, "en", "k") == [{"language": "en", "text": "a cat"}]
    assert sample_captions({"json": json.dumps({"caption": "eine Katze", "language": "de"})}, None, "k")[0]["language"] == "de"
    assert sample_captions({"txt": b"ein Hund"}, "de", "k") == [{"language": "de", "text": "ein Hund"}]
    assert sample_captions({"json": b"{}"}, "en", "k") == []
    with pytest.raises(BadSample, match="without a language"):
        sample_captions({"txt": b"a dog"}, None, "key 'k'")
    with pytest.raises(BadSample, match="does not parse"):
        sample_captions({"json": b"{not json"}, None, "key 'k'")


def test_decode_image_names_a_corrupt_or_missing_image():
    image = decode_image(encode(Image.new("RGB", (4, 4))), "k")
    assert image.size == (4, 4)
    with pytest.raises(BadSample, match="corrupt image"):
        decode_image(b"\x89PNG not really", "shard s: key 'k'")
    with pytest.raises(BadSample, match="no image"):
        decode_image(None, "shard s: key 'k'")


def test_shard_writer_writes_tars_that_tarfile_reads_and_no_part_files(tmp_path):
    paths = write_tiny_shards(tmp_path, samples_per_shard=5)
    assert [os.path.basename(p) for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    assert not list(tmp_path.glob("*.part"))
    with tarfile.open(paths[0]) as archive:
        names = archive.getnames()
        meta = json.loads(archive.extractfile(names[1]).read())
        image = Image.open(io.BytesIO(archive.extractfile(names[0]).read()))
    assert names[:2] == ["0-red-square.png", "0-red-square.json"] and len(names) == 10
    assert meta["captions"][0] == {"language": "en", "text": "a red square"} and image.size == (32, 32)
    assert os.path.getsize(paths[0]) % tarfile.RECORDSIZE == 0


@pytest.mark.parametrize("format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_read_shard_agrees_with_tarfile_on_pax_gnu_and_ustar_archives(tmp_path, format):
    """Long and non-ASCII names (pax / GNU records), float mtimes as webdataset writes them, folders."""
    long_dir = "d" * 60 + "/" + "e" * 50 if format != tarfile.USTAR_FORMAT else "dir"
    names = [f"{long_dir}/s{i}.{ext}" for i in range(3) for ext in ("png", "json")]
    names.append("crème/brûlée.txt" if format != tarfile.USTAR_FORMAT else "plain/x.txt")
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w", format=format) as archive:
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for index, name in enumerate(names):
            data = f"{name} {index}".encode() * (index + 1)
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1700000000.25
            archive.addfile(info, io.BytesIO(data))
    entries = list(read_shard(str(path)))
    assert entries[-1] == ShardEnd(truncated=False)
    with tarfile.open(path) as archive:
        expected = [(m.name, archive.extractfile(m).read()) for m in archive.getmembers() if m.isfile()]
    got = [(f"{key}.{ext}", data) for _, key, files in entries[:-1] for ext, data in files.items()]
    assert got == expected
    offset = entries[1][0]
    assert [key for _, key, _ in list(read_shard(str(path), offset))[:-1]] == [key for _, key, _ in entries[1:-1]]
