"""Streaming training data: shards split across processes, shuffled reproducibly, resumable mid-epoch.

:class:`CCRStream` is a ``torch.utils.data.IterableDataset`` of canonical rows (``image`` as a PIL image,
``image_id``, ``captions``) read from a *source* of shards: tar shard sets (:class:`TarShards`, see
:mod:`modeling_ccr.shards`) or any ``datasets.IterableDataset`` (:class:`DatasetShards`). Memory does not
grow with the corpus: a reader holds one shuffle block of raw samples.

Splitting: every (process, data-loader worker) pair is one *reader*. Each epoch the shard order is a seeded
permutation; with at least as many shards as readers, reader ``r`` takes shards ``r, r+R, ...`` of that
order; with fewer, the readers of one shard take every ``c``-th sample of it. Every sample is read by exactly
one reader once per epoch.

Shuffling: shard order, then a block shuffle: a reader reads ``buffer_size`` samples, permutes them with a
generator seeded by (seed, epoch, reader, block) and yields them. Unlike a rolling buffer (datasets'
``shuffle(buffer_size=...)``, whose buffer a checkpoint cannot hold), a block is rebuilt exactly from where
it starts, so a reader's position is a few integers: block start (shard, byte offset or row, sample index)
and how many of the block it has yielded.

Resuming: each sample carries its reader's position; :class:`StreamDataLoader` records the position of the
last batch it handed out, :class:`StreamStateCallback` stores every process's positions in the checkpoint's
``trainer_state.json`` (written last, so a checkpoint is complete with its stream state or not at all) and
restores them when training resumes; Trainer's own batch skipping is turned off (``ignore_data_skip``).

Bad samples (no image, no caption, a corrupt image, a truncated shard) are skipped with a warning naming
shard and key, and counted; the count travels with the positions and ends in the run's results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .shards import (
    BadSample,
    ShardEnd,
    decode_image,
    expand_shards,
    read_shard,
    sample_captions,
    sample_image,
)

logger = logging.getLogger(__name__)

STATE_KEY = "__stream__"


@dataclass
class Item:
    """One sample as a source reads it: where it starts, its key, raw image and parsed captions."""

    position: int
    key: str
    image: Any
    captions: list[dict[str, str]]


@dataclass
class Bad:
    """A sample or shard end a source could not read; ``key`` None for a truncated shard's lost rest."""

    position: int
    key: str | None
    reason: str


class TarShards:
    """Tar shard sets joined on the key: ``sets`` is a list of ``(shard paths, language or None)``.

    The first set holds the images; every set has the same number of shards and shard ``i`` of each holds
    the same keys (one language per set, as img2dataset writes one caption column per run)."""

    def __init__(self, sets: Sequence[tuple[Sequence[str], str | None]]) -> None:
        if not sets:
            raise ValueError("no shard set given")
        self.sets = [(list(shards), language) for shards, language in sets]
        counts = {len(shards) for shards, _ in self.sets}
        if len(counts) != 1:
            raise ValueError(f"joined shard sets must have the same number of shards, got {sorted(counts)}")
        self.num_shards = counts.pop()

    @classmethod
    def from_spec(cls, spec: str) -> TarShards:
        """``"shards/{00000..00099}.tar"``, or per-language sets ``"en=en/{0..9}.tar;de=de/{0..9}.tar"``."""
        sets = []
        for part in (piece.strip() for piece in spec.split(";")):
            if not part:
                continue
            language, eq, pattern = part.partition("=")
            if not eq or "/" in language or "{" in language:
                language, pattern = None, part
            sets.append((expand_shards(pattern), language))
        return cls(sets)

    def name(self, shard: int) -> str:
        return self.sets[0][0][shard]

    def read(self, shard: int, position: int) -> Iterator[Item | Bad]:
        joined = [self._captions_by_key(shards[shard], language) for shards, language in self.sets[1:]]
        language = self.sets[0][1]
        for entry in read_shard(self.sets[0][0][shard], position):
            if isinstance(entry, ShardEnd):
                if entry.truncated:
                    yield Bad(-1, None, f"truncated or corrupt shard: sample {entry.lost_key!r} and any after it "
                                        f"are lost ({entry.error})")
                return
            offset, key, files = entry
            try:
                captions = sample_captions(files, language, f"key {key!r}")
                for extra in joined:
                    captions = captions + extra.get(key, [])
            except BadSample as error:
                yield Bad(offset, key, str(error))
                continue
            yield Item(offset, key, sample_image(files), captions)

    def _captions_by_key(self, path: str, language: str | None) -> dict[str, list[dict[str, str]]]:
        captions: dict[str, list[dict[str, str]]] = {}
        for entry in read_shard(path, keep_images=False):
            if isinstance(entry, ShardEnd):
                if entry.truncated:
                    logger.warning("caption shard %s is truncated at key %r (%s): it and later keys lack its captions",
                                   path, entry.lost_key, entry.error)
                break
            _, key, files = entry
            try:
                captions[key] = sample_captions(files, language, f"{path}: key {key!r}")
            except BadSample as error:
                logger.warning("skipping captions of %s", error)
        return captions


class DatasetShards:
    """A ``datasets.IterableDataset`` (``load_dataset(..., streaming=True)``) as a source of shards.

    Rows are canonical (``image``, ``image_id``, ``captions``) or webdataset-style (``jpg``/``png`` +
    ``json``/``txt``, as datasets' ``webdataset`` builder gives them, in ``language`` when a caption has none).
    Positions are row numbers inside a data-source shard (``dataset.shard(n, i)``)."""

    def __init__(self, dataset, language: str | None = None, name: str = "dataset") -> None:
        from datasets import Image as ImageFeature

        for column, feature in (dataset.features or {}).items():
            if isinstance(feature, ImageFeature) and feature.decode:  # decoded when yielded, not when read
                dataset = dataset.cast_column(column, ImageFeature(decode=False))
        self.dataset = dataset
        self.language = language
        self.label = name
        self.num_shards = dataset.num_shards

    def name(self, shard: int) -> str:
        return f"{self.label}[shard {shard}]"

    def read(self, shard: int, position: int) -> Iterator[Item | Bad]:
        rows = self.dataset.shard(num_shards=self.num_shards, index=shard, contiguous=True)
        if position:
            rows = rows.skip(position)
        for index, row in enumerate(rows, start=position):
            key = str(row.get("image_id") or row.get("__key__") or index)
            try:
                if isinstance(row.get("captions"), list):
                    captions = sample_captions({"json": {"captions": row["captions"]}}, self.language, f"key {key!r}")
                else:
                    captions = sample_captions(row, self.language, f"key {key!r}")
            except BadSample as error:
                yield Bad(index, key, str(error))
                continue
            image = row.get("image")
            yield Item(index, key, image if image is not None else sample_image(row), captions)


@dataclass
class _Plan:
    """What one reader reads in one epoch: its shards in order, and which of their samples (stride/phase)."""

    shards: list[int]
    stride: int
    phase: int


def reader_plan(num_shards: int, num_readers: int, reader: int, seed: int, epoch: int, shuffle: bool) -> _Plan:
    """Split by shard, then by sample when there are fewer shards than readers: each sample read once."""
    order = np.random.default_rng([seed, epoch]).permutation(num_shards) if shuffle else np.arange(num_shards)
    order = [int(shard) for shard in order]
    if num_shards >= num_readers:
        return _Plan(order[reader::num_readers], 1, 0)
    shard = reader % num_shards
    return _Plan([order[shard]], len(range(shard, num_readers, num_shards)), reader // num_shards)


class CCRStream(IterableDataset):
    """Canonical CCR rows streamed from ``source`` (:class:`TarShards` or :class:`DatasetShards`).

    Args:
        source: the shards.
        languages: keep only captions in these languages (a sample left with none is skipped and counted).
        seed: shard order and block shuffles derive from it (and the epoch).
        buffer_size: samples per shuffle block (memory: this many raw samples per reader).
        shuffle: False reads shards and samples in order.
        rank, world_size: this process and the number of processes (default: torch.distributed's, if any).
    """

    def __init__(
        self,
        source: TarShards | DatasetShards,
        languages: Sequence[str] | None = None,
        seed: int = 0,
        buffer_size: int = 1000,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.source = source
        self.languages = None if languages is None else set(languages)
        self.seed, self.buffer_size, self.shuffle = seed, buffer_size, shuffle
        self._rank, self._world_size = rank, world_size
        self.resume: dict[str, Any] = {"epoch": 0, "readers": {}, "next_slot": 0}

    @property
    def rank(self) -> int:
        if self._rank is not None:
            return self._rank
        return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

    @property
    def world_size(self) -> int:
        if self._world_size is not None:
            return self._world_size
        return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        workers, worker_id = (1, 0) if worker is None else (worker.num_workers, worker.id)
        slot = (worker_id + self.resume.get("next_slot", 0)) % workers
        reader = self.rank * workers + slot
        yield from self._read(reader, self.world_size * workers, dict(self.resume["readers"].get(str(reader), {})))

    def _items(self, plan: _Plan, shard_index: int, position: int, sample: int) -> Iterator[tuple[tuple, Item | Bad]]:
        """This reader's items from a start, each with the start it would be resumed from."""
        for index in range(shard_index, len(plan.shards)):
            shard = plan.shards[index]
            for item in self.source.read(shard, position if index == shard_index else 0):
                if isinstance(item, Bad) and item.key is None:  # truncated shard: reported by the phase-0 reader
                    if plan.phase == 0:
                        yield (index, item.position, sample), item
                    break
                if sample % plan.stride == plan.phase:
                    yield (index, item.position, sample), item
                sample += 1
            sample = 0

    def _read(self, reader: int, num_readers: int, state: dict[str, Any]) -> Iterator[dict[str, Any]]:
        epoch = int(self.resume["epoch"])
        plan = reader_plan(self.source.num_shards, num_readers, reader, self.seed, epoch, self.shuffle)
        skipped = int(state.get("skipped", 0))
        block = int(state.get("block", 0))
        start = (int(state.get("shard", 0)), int(state.get("position", 0)), int(state.get("sample", 0)))
        taken = int(state.get("taken", 0))
        restoring = "block" in state  # the restored block's read-time skips are already in `skipped`
        items = self._items(plan, *start)
        pending = None
        while True:
            samples, block_start = [], None
            while True:
                where, item = pending or next(items, (None, None))
                pending = None
                if item is None:
                    break
                captions = self._keep(item.captions) if isinstance(item, Item) else []
                if captions and len(samples) == self.buffer_size:
                    # The block is full; bad items up to here belong to it, so their count travels with its samples.
                    pending = (where, item)
                    break
                if block_start is None and item.position >= 0:
                    block_start = where
                if not captions:
                    if not restoring:
                        skipped += 1
                        self._warn(plan, where, item, "no caption in the kept languages")
                    continue
                samples.append((plan.shards[where[0]], item, captions))
            if not samples:
                return
            order = np.random.default_rng([self.seed, epoch, reader, block]).permutation(len(samples)) \
                if self.shuffle else np.arange(len(samples))
            for index in range(taken, len(samples)):
                shard, item, captions = samples[order[index]]
                where = f"shard {self.source.name(shard)}: key {item.key!r}"
                try:
                    image = decode_image(item.image, where)
                except BadSample as error:
                    skipped += 1
                    logger.warning("skipping a bad sample (%s)", error)
                    continue
                position = {"block": block, "shard": block_start[0], "position": block_start[1],
                            "sample": block_start[2], "taken": index + 1, "skipped": skipped}
                yield {"image": image, "image_id": item.key, "captions": captions, STATE_KEY: (reader, position)}
            block, taken, restoring = block + 1, 0, False

    def _keep(self, captions: list[dict[str, str]]) -> list[dict[str, str]]:
        if self.languages is None:
            return captions
        return [caption for caption in captions if caption["language"] in self.languages]

    def _warn(self, plan: _Plan, where: tuple, item: Item | Bad, default: str) -> None:
        shard = self.source.name(plan.shards[where[0]])
        if isinstance(item, Bad):
            logger.warning("skipping a bad sample in shard %s: %s", shard, item.reason)
        else:
            logger.warning("skipping a bad sample in shard %s: key %r has %s", shard, item.key, default)


class _CollateWithState:
    """Collates rows with ``collate_fn`` and hands the position of the batch's last row along."""

    def __init__(self, collate_fn: Callable) -> None:
        self.collate_fn = collate_fn

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        state = rows[-1][STATE_KEY]
        batch = self.collate_fn([{k: v for k, v in row.items() if k != STATE_KEY} for row in rows])
        batch[STATE_KEY] = state
        return batch


class StreamDataLoader(DataLoader):
    """A DataLoader over a :class:`CCRStream` that knows the stream position of the last batch it yielded.

    One ``iter()`` is one epoch from the recorded position; ``state_dict`` / ``load_state_dict`` hold this
    process's position (epoch, each reader's block and offset, bad-sample counts)."""

    def __init__(self, stream: CCRStream, batch_size: int, collate_fn: Callable, **kwargs: Any) -> None:
        kwargs.pop("persistent_workers", None)  # workers must restart from the recorded position each epoch
        # Each iter() of a DataLoader draws a worker seed from its generator: with torch's global one (the
        # default), a resumed run would draw once more than an uninterrupted one and its training step
        # draws (caption sampling, masks) would differ. The stream itself draws nothing from torch.
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))
        super().__init__(stream, batch_size=batch_size, collate_fn=_CollateWithState(collate_fn), **kwargs)
        self._state: dict[str, Any] = {"epoch": 0, "readers": {}, "next_slot": 0, "skipped_before": 0}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        workers = max(self.num_workers, 1)
        rank = self.dataset._rank = self.dataset.rank  # fixed here, in the main process, for the workers
        self.dataset._world_size = self.dataset.world_size
        self.dataset.resume = {key: self._state[key] for key in ("epoch", "readers", "next_slot")}
        for batch in super().__iter__():
            reader, position = batch.pop(STATE_KEY)
            self._state["readers"][str(reader)] = position
            self._state["next_slot"] = (reader - rank * workers + 1) % workers
            yield batch
        skipped = self.skipped
        self._state = {"epoch": self._state["epoch"] + 1, "readers": {}, "next_slot": 0, "skipped_before": skipped}

    @property
    def skipped(self) -> int:
        """Bad samples this process skipped so far (all epochs)."""
        return self._state["skipped_before"] + sum(p.get("skipped", 0) for p in self._state["readers"].values())

    def state_dict(self) -> dict[str, Any]:
        return {**self._state, "num_workers": max(self.num_workers, 1), "world_size": self.dataset.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = (max(self.num_workers, 1), self.dataset.world_size)
        if (state["num_workers"], state["world_size"]) != expected:
            raise ValueError(
                f"the checkpoint's stream position was saved with {state['world_size']} process(es) x "
                f"{state['num_workers']} data-loader worker(s); resume with the same (now {expected[1]} x {expected[0]})"
            )
        self._state = {key: state[key] for key in ("epoch", "readers", "next_slot", "skipped_before")}


def _all_ranks(value: Any) -> list[Any]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


class StreamStateCallback(TrainerCallback, ExportableState):
    """Keeps every process's stream position in ``trainer_state.json`` and restores it on resume.

    When a checkpoint is about to be written (``control.should_save``), the positions of all processes are
    gathered (every process runs this hook) and stored among Trainer's stateful-callback states, which
    ``trainer_state.json`` — written last — holds. On resume each process takes its own back."""

    def __init__(self) -> None:
        self.positions: list[dict[str, Any]] = []
        self.skipped_total = 0

    def state(self) -> dict[str, Any]:
        return {"args": {}, "attributes": {"positions": self.positions}}

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        saved = state.stateful_callbacks.get(type(self).__name__) if state.global_step > 0 else None
        if not isinstance(train_dataloader, StreamDataLoader) or state.global_step == 0:
            return
        if saved is None:
            logger.warning("the checkpoint holds no stream position (not written by a stream run): the stream "
                           "starts from its beginning")
            return
        positions = (saved[0] if isinstance(saved, list) else saved)["attributes"]["positions"]
        rank = train_dataloader.dataset.rank
        if len(positions) <= rank:
            raise ValueError(f"the checkpoint holds stream positions for {len(positions)} process(es), not for rank {rank}")
        train_dataloader.load_state_dict(positions[rank])
        logger.info("stream resumes at epoch %d with %d reader position(s)", positions[rank]["epoch"],
                    len(positions[rank]["readers"]))

    def _gather(self, train_dataloader) -> None:
        if isinstance(train_dataloader, StreamDataLoader):
            self.positions = _all_ranks(train_dataloader.state_dict())

    def on_step_end(self, args, state, control, train_dataloader=None, **kwargs):
        if control.should_save:
            self._gather(train_dataloader)

    def on_epoch_end(self, args, state, control, train_dataloader=None, **kwargs):
        if control.should_save:
            self._gather(train_dataloader)

    def on_train_end(self, args, state, control, train_dataloader=None, **kwargs):
        if isinstance(train_dataloader, StreamDataLoader):
            self.skipped_total = int(sum(_all_ranks(train_dataloader.skipped)))
            if self.skipped_total:
                logger.warning("the training stream skipped %d bad sample(s) or truncated shard end(s); "
                               "the warnings above name them", self.skipped_total)


def stream_dataloader(trainer) -> StreamDataLoader:
    """The training DataLoader of a ``Trainer`` whose ``train_dataset`` is a :class:`CCRStream`."""
    args = trainer.args
    return StreamDataLoader(
        trainer.train_dataset,
        batch_size=trainer._train_batch_size,
        collate_fn=trainer.data_collator,
        num_workers=args.dataloader_num_workers,
        pin_memory=args.dataloader_pin_memory and torch.accelerator.is_available(),
        drop_last=args.dataloader_drop_last,
        prefetch_factor=args.dataloader_prefetch_factor if args.dataloader_num_workers > 0 else None,
    )


def prepare_stream_training(trainer) -> None:
    """Make a Trainer resume a :class:`CCRStream` by position: no batch skipping, positions in checkpoints."""
    if trainer.args.max_steps <= 0:
        raise ValueError("training from a stream needs max_steps > 0 (a stream has no length to count epochs by)")
    trainer.args.ignore_data_skip = True
    if trainer.train_dataset.languages is None:  # a caption in another language would stop the collator
        trainer.train_dataset.languages = set(trainer.languages)
    trainer.add_callback(StreamStateCallback())


def stream_skipped(trainer) -> int:
    """Bad samples the training stream skipped, summed over processes (0 for map-style data)."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, StreamStateCallback):
            return callback.skipped_total
    return 0


def materialize(source: TarShards | DatasetShards, languages: Sequence[str] | None = None):
    """A small source (an evaluation shard set) as an in-memory canonical ``datasets.Dataset``, in order."""
    from datasets import Dataset

    from .dataset_schema import CCR_FEATURES

    rows = [
        {k: v for k, v in row.items() if k != STATE_KEY}
        for row in CCRStream(source, languages=languages, shuffle=False, rank=0, world_size=1)
    ]
    if not rows:
        raise ValueError("the evaluation shards hold no usable sample")
    return Dataset.from_list(rows, features=CCR_FEATURES)


def peek_languages(stream: CCRStream, samples: int = 1000) -> list[str]:
    """Languages among the captions of the first ``samples`` items of ``stream``'s first shard (unshuffled)."""
    languages: set[str] = set()
    for count, item in enumerate(stream.source.read(0, 0)):
        if count >= samples:
            break
        if isinstance(item, Item):
            languages.update(caption["language"] for caption in item.captions)
    if not languages:
        raise ValueError(f"no caption found in the first shard {stream.source.name(0)}")
    return sorted(languages)


def peek_texts(stream: CCRStream, samples: int = 10000) -> list[str]:
    """Caption texts of the first ``samples`` items, in shard order (e.g. to train a tokenizer)."""
    texts: list[str] = []
    count = 0
    for shard in range(stream.source.num_shards):
        for item in stream.source.read(shard, 0):
            if isinstance(item, Item):
                texts.extend(caption["text"] for caption in stream._keep(item.captions))
                count += 1
                if count >= samples:
                    return texts
    return texts


def open_stream(
    dataset: str,
    streaming: bool = False,
    split: str = "train",
    languages: Sequence[str] | None = None,
    seed: int = 0,
    buffer_size: int = 1000,
) -> CCRStream:
    """The stream ``train.py --dataset`` names: tar shards (a pattern, see :meth:`TarShards.from_spec`) or,
    with ``streaming``, any dataset ``datasets.load_dataset(dataset, split=split, streaming=True)`` opens.

    Without ``languages``, those of the first shard's first captions are kept (logged)."""
    if streaming:
        from datasets import load_dataset

        source: TarShards | DatasetShards = DatasetShards(
            load_dataset(dataset, split=split, streaming=True), name=dataset
        )
    else:
        source = TarShards.from_spec(dataset)
    stream = CCRStream(source, languages=languages, seed=seed, buffer_size=buffer_size)
    if languages is None:
        stream.languages = set(peek_languages(stream))
        logger.warning("stream %s: training on the languages of its first captions, %s (set them with --languages)",
                       dataset, sorted(stream.languages))
    return stream
