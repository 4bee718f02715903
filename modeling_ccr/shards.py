"""Reading webdataset / img2dataset tar shards into canonical CCR samples, one shard at a time.

A shard is a tar file whose members are grouped by key, consecutive in the archive (the webdataset
convention img2dataset writes): ``000000123.jpg`` + ``000000123.json`` and/or ``000000123.txt``.

Captions of a sample (the schema documented in the README, "Training from shards"):

- ``key.json`` with ``"captions"``: a list of ``{"language", "text"}`` records (the canonical form), or a
  mapping ``{language: text or [texts]}``;
- or ``key.json`` with img2dataset's ``"caption"`` field, in the json's ``"language"`` or the shard set's
  language;
- or ``key.txt``, in the shard set's language.

Several shard sets of one language each (``en/00000.tar``, ``de/00000.tar``, ...) are joined on the key:
shard ``i`` of every set holds the same keys; the first set holds the images.

Positions are byte offsets of a sample's first tar header, so a reader resumes inside a shard by seeking
there instead of reading the shard again. A bad sample (no image, no caption, a corrupt image) or the
truncated end of a shard raises :class:`BadSample` or is reported by :func:`read_shard`; the stream counts
and skips them (see :mod:`modeling_ccr.streaming`).
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .dataset_schema import canonical_language

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_END_OF_ARCHIVE = 1024  # two zero blocks end every complete tar
_ZERO_BLOCK = bytes(512)
_BRACES = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")


class BadSample(ValueError):
    """A sample that cannot be trained on; the stream skips it and counts it."""


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{00000..00099}`` (zero-padded ranges) and ``{a,b}`` alternatives, left to right."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end():]
    numbers = _RANGE.match(body)
    if numbers:
        first, last = numbers.groups()
        if int(last) < int(first):
            raise ValueError(f"{pattern}: empty range {{{body}}}")
        width = len(first) if first.startswith("0") else 0
        options = [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    else:
        options = body.split(",")
    return [expanded for option in options for expanded in expand_braces(head + option + tail)]


def expand_shards(pattern: str | Sequence[str]) -> list[str]:
    """The shard files a pattern names: brace patterns, globs, folders (their ``*.tar``) or a list of those.

    Every named file must exist: a missing shard is an error here, before training starts."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    shards: list[str] = []
    for item in patterns:
        for path in expand_braces(item):
            if os.path.isdir(path):
                found = sorted(glob.glob(os.path.join(path, "*.tar")))
                if not found:
                    raise FileNotFoundError(f"{path} holds no .tar shard")
                shards.extend(found)
            elif glob.has_magic(path):
                found = sorted(glob.glob(path))
                if not found:
                    raise FileNotFoundError(f"no shard matches {path}")
                shards.extend(found)
            elif not os.path.isfile(path):
                raise FileNotFoundError(f"shard {path} does not exist (from pattern {item!r})")
            else:
                shards.append(path)
    if not shards:
        raise FileNotFoundError(f"no shard in {pattern!r}")
    return shards


def is_shard_pattern(path: str) -> bool:
    """Whether ``--dataset`` names tar shards (a .tar file, a brace/glob pattern of them, or a folder of them)."""
    if path.endswith(".tar") or (_BRACES.search(path) and ".tar" in path):
        return True
    return os.path.isdir(path) and bool(glob.glob(os.path.join(path, "*.tar")))


def _split_key(name: str) -> tuple[str | None, str]:
    """``dir/000123.jpg`` -> (``dir/000123``, ``jpg``); ``a.b.json`` -> (``a``, ``b.json``) like webdataset."""
    directory, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot or not stem:
        return None, ""
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


@dataclass
class ShardEnd:
    """How a shard ended: cleanly, or truncated/corrupt inside sample ``lost_key`` (it and the rest are lost)."""

    truncated: bool
    error: str = ""
    lost_key: str | None = None


class _Truncated(Exception):
    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name  # the member being read, when its header was whole


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or base-256 when its first byte has the high bit set."""
    if field[:1] and field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    field = field.strip(b"\0 ")
    return int(field, 8) if field else 0


def _pax_records(data: bytes) -> dict[str, str]:
    records, position = {}, 0
    while position < len(data) and data[position:position + 1] != b"\0":
        length = int(data[position:data.index(b" ", position)])
        keyword, _, value = data[data.index(b" ", position) + 1:position + length - 1].partition(b"=")
        records[keyword.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        position += length
    return records


def _tar_files(handle, offset: int, keep: Callable[[str], bool]) -> Iterator[tuple[int, str, bytes | None]]:
    """``(header offset, name, data)`` of each regular file from ``offset`` to the end-of-archive block.

    Parses ustar headers (with pax ``x``/``g`` and GNU ``L`` long-name records, as tarfile and webdataset
    write them) directly: ``tarfile``'s per-member objects cost as much as decoding a small image.
    ``data`` is None for files ``keep`` rejects (their bytes are skipped, not read). A header cut short, a
    bad checksum or data cut short raise :class:`_Truncated`."""
    position, start, long_name, pax = offset, None, None, {}
    while True:
        header = handle.read(512)
        if len(header) < 512:
            raise _Truncated("the archive ends without its end-of-archive blocks" if not header
                             else "the archive ends inside a header")
        if header == _ZERO_BLOCK:
            return
        stored = _number(header[148:156])
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise _Truncated(f"bad header checksum at byte {position}")
        start = position if start is None else start
        typeflag = header[156:157]
        size = int(pax["size"]) if "size" in pax else _number(header[124:136])
        padded = size + (-size % 512)
        position += 512 + padded
        if typeflag in (b"x", b"g", b"L"):
            data = handle.read(padded)
            if len(data) < padded:
                raise _Truncated("the archive ends inside an extended header")
            if typeflag == b"x":
                pax = _pax_records(data[:size])
            elif typeflag == b"L":
                long_name = data[:size].rstrip(b"\0").decode("utf-8", "surrogateescape")
            else:
                start = None
            continue
        name = pax.get("path") or long_name
        if name is None:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            prefix = header[345:500].split(b"\0", 1)[0]
            if prefix and header[257:262] == b"ustar":
                name = prefix.decode("utf-8", "surrogateescape") + "/" + name
        regular = typeflag in (b"0", b"\0", b"7")
        if regular and keep(name):
            data = handle.read(padded)
            if len(data) < size:
                raise _Truncated(f"the archive ends inside {name}", name)
            yield start, name, data[:size]
        else:
            handle.seek(padded, 1)
            if regular:
                yield start, name, None
        start, long_name, pax = None, None, {}


def read_shard(path: str, offset: int = 0, keep_images: bool = True) -> Iterator[tuple[int, str, dict[str, bytes]] | ShardEnd]:
    """Yield ``(offset, key, {extension: bytes})`` per sample from byte ``offset`` on, then one :class:`ShardEnd`.

    ``offset`` is the position of the sample's first tar header: pass it back to resume at that sample.
    ``keep_images=False`` skips image bytes (caption-only reading of joined shard sets)."""
    key: str | None = None
    files: dict[str, bytes] = {}
    start = offset

    def keep(name: str) -> bool:
        return keep_images or not name.lower().endswith(tuple("." + ext for ext in IMAGE_EXTENSIONS))

    with open(path, "rb", buffering=1 << 20) as handle:
        handle.seek(offset)
        try:
            for member_offset, name, data in _tar_files(handle, offset, keep):
                member_key, extension = _split_key(name)
                if member_key is None:
                    continue
                if member_key != key:
                    if key is not None:
                        yield start, key, files
                    key, files, start = member_key, {}, member_offset
                if data is not None:
                    files[extension] = data
        except (_Truncated, ValueError, OSError) as error:
            lost = _split_key(error.name)[0] if isinstance(error, _Truncated) and error.name else None
            if key is not None and lost is not None and lost != key:
                yield start, key, files  # whole: the cut is inside the next sample
            yield ShardEnd(truncated=True, error=str(error), lost_key=lost or key)
            return
    if key is not None:
        yield start, key, files
    yield ShardEnd(truncated=False)


def _records(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, dict):
        pairs = [(lang, text) for lang, texts in value.items() for text in (texts if isinstance(texts, list) else [texts])]
    elif isinstance(value, list):
        if not all(isinstance(record, dict) and "language" in record and "text" in record for record in value):
            raise BadSample(f"{where}: 'captions' must be {{language, text}} records or a {{language: text}} mapping")
        pairs = [(record["language"], record["text"]) for record in value]
    else:
        raise BadSample(f"{where}: 'captions' must be a list or a mapping, got {type(value).__name__}")
    captions = []
    for language, text in pairs:
        if not isinstance(language, str) or not language or not isinstance(text, str):
            raise BadSample(f"{where}: caption {text!r} in language {language!r} is not text with a language code")
        if text.strip():
            captions.append({"language": _language(language, where), "text": text.strip()})
    return captions


def _language(code: str, where: str) -> str:
    """The canonical language code (``dataset_schema.canonical_language``); a bad one makes the sample bad."""
    try:
        return canonical_language(code)
    except ValueError as error:
        raise BadSample(f"{where}: {error}") from None


def sample_captions(files: dict[str, Any], language: str | None, where: str) -> list[dict[str, str]]:
    """The captions of one sample (see the module docstring for the schema); may be empty."""
    meta = files.get("json")
    if isinstance(meta, bytes | str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as error:
            raise BadSample(f"{where}: its .json does not parse ({error.msg})") from None
    if meta is not None and not isinstance(meta, dict):
        raise BadSample(f"{where}: its .json must hold an object, got {type(meta).__name__}")
    meta = meta or {}
    if meta.get("captions") is not None:
        return _records(meta["captions"], where)
    text = meta.get("caption")
    if text is None:
        text = files.get("txt")
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str) or not text.strip():
        return []
    caption_language = meta.get("language") or language
    if not caption_language:
        raise BadSample(f"{where}: a caption without a language; give the shard set's language (e.g. en=shards/...)")
    return [{"language": _language(caption_language, where), "text": text.strip()}]


def sample_image(files: dict[str, Any]) -> Any:
    """The image member of a sample (bytes, a PIL image or a ``{"bytes"}`` dict), or None."""
    for extension in IMAGE_EXTENSIONS:
        if files.get(extension) is not None:
            return files[extension]
    return None


def decode_image(image: Any, where: str) -> Image.Image:
    """A loaded PIL image; a corrupt one is a :class:`BadSample`."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, dict):
        image = image.get("bytes") or (open(image["path"], "rb").read() if image.get("path") else None)
    if not isinstance(image, bytes | bytearray) or not image:
        raise BadSample(f"{where}: no image")
    try:
        decoded = Image.open(io.BytesIO(image))
        decoded.load()
    except Exception as error:  # PIL raises many types for corrupt data
        raise BadSample(f"{where}: corrupt image ({type(error).__name__}: {error})") from None
    return decoded


def _ustar_header_template() -> bytearray:
    header = bytearray(512)
    for start, value in ((100, b"0000644\0"), (108, b"0000000\0"), (116, b"0000000\0"), (136, b"00000000000\0"),
                         (148, b" " * 8), (156, b"0"), (257, b"ustar\0"), (263, b"00")):
        header[start:start + len(value)] = value
    return header


_USTAR_HEADER = _ustar_header_template()


def tar_member(name: str, data: bytes) -> bytes:
    """One regular-file member of a ustar archive (header, data, padding): what ``tarfile`` writes, without
    its per-member overhead (writing a million-sample corpus takes seconds, not minutes)."""
    encoded = name.encode("utf-8")
    if len(encoded) > 100:
        raise ValueError(f"member name {name!r} is longer than the 100 bytes a ustar header holds")
    header = bytearray(_USTAR_HEADER)
    header[: len(encoded)] = encoded
    header[124:136] = b"%011o\0" % len(data)
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + data + bytes(-len(data) % 512)


class ShardWriter:
    """Writes samples as numbered tar shards (``00000.tar``, ...) of ``samples_per_shard`` samples each:
    ``key.<image extension>`` and ``key.json`` with ``{"captions": [{language, text}, ...]}``, in that order.

    Each shard is written as ``<name>.part`` and renamed when complete. Use as a context manager;
    :attr:`paths` lists the shards written."""

    def __init__(self, folder: str, samples_per_shard: int = 10000) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.folder, self.samples_per_shard = folder, samples_per_shard
        os.makedirs(folder, exist_ok=True)
        self.paths: list[str] = []
        self._handle: io.BufferedWriter | None = None
        self._count = 0
        self._size = 0

    def _add(self, name: str, data: bytes) -> None:
        member = tar_member(name, data)
        self._handle.write(member)
        self._size += len(member)

    def write(self, key: str, image: bytes, captions: list[dict[str, str]], extension: str = "jpg",
              extra: dict[str, Any] | None = None) -> None:
        """Add one sample (``image`` already encoded in ``extension``'s format)."""
        self.add_sample(key, image, json.dumps({"captions": captions, **(extra or {})}, ensure_ascii=False).encode(),
                        extension)

    def add_sample(self, key: str, image: bytes, meta: bytes, extension: str = "jpg") -> None:
        """Add one sample whose json is already encoded."""
        if self._handle is None or self._count == self.samples_per_shard:
            self.close()
            self.paths.append(os.path.join(self.folder, f"{len(self.paths):05d}.tar"))
            self._handle = open(self.paths[-1] + ".part", "wb")
            self._count = self._size = 0
        self._add(f"{key}.{extension}", image)
        self._add(f"{key}.json", meta)
        self._count += 1

    def close(self) -> None:
        if self._handle is not None:
            end = self._size + _END_OF_ARCHIVE
            self._handle.write(bytes(_END_OF_ARCHIVE + -end % tarfile.RECORDSIZE))
            self._handle.close()
            self._handle = None
            os.replace(self.paths[-1] + ".part", self.paths[-1])

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
