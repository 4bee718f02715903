"""CCRStream: split across processes and workers, seeded shuffling, exact resume, bad samples counted."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter

import pytest
import torch
from _shard_helpers import encode, write_tiny_shards
from conftest import tiny_ccr_dataset, tiny_model, tiny_processor
from PIL import Image
from transformers import TrainerCallback, set_seed

from modeling_ccr.collator import CCRCollator
from modeling_ccr.shards import ShardEnd, ShardWriter, read_shard
from modeling_ccr.streaming import (
    STATE_KEY,
    CCRStream,
    DatasetShards,
    StreamDataLoader,
    TarShards,
    materialize,
    open_stream,
    stream_skipped,
)
from modeling_ccr.trainer import CCRTrainer, CCRTrainingArguments

LANGUAGES = ["de", "en", "fr"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """36 samples (the 12 tiny images three times) in 9 shards of 4."""
    folder = tmp_path_factory.mktemp("shards")
    write_tiny_shards(folder, samples_per_shard=4, copies=3)
    return str(folder / "{00000..00008}.tar")


def _ids(stream) -> list[str]:
    return [row["image_id"] for row in stream]


@pytest.mark.parametrize("processes", [1, 2, 4, 9, 13])
def test_every_sample_once_per_epoch_across_processes(shards, processes):
    source = TarShards.from_spec(shards)
    seen = Counter()
    for rank in range(processes):
        seen.update(_ids(CCRStream(source, seed=3, buffer_size=5, rank=rank, world_size=processes)))
    assert len(seen) == 36 and set(seen.values()) == {1}


def test_shuffle_is_seeded_per_epoch_and_off_reads_in_order(shards):
    source = TarShards.from_spec(shards)
    first = _ids(CCRStream(source, seed=3, buffer_size=5))
    assert first == _ids(CCRStream(source, seed=3, buffer_size=5))
    assert first != _ids(CCRStream(source, seed=4, buffer_size=5))
    next_epoch = CCRStream(source, seed=3, buffer_size=5)
    next_epoch.resume = {"epoch": 1, "readers": {}, "next_slot": 0}
    assert sorted(_ids(next_epoch)) == sorted(first) and _ids(next_epoch) != first
    in_order = _ids(CCRStream(source, shuffle=False))
    keys = [f"{copy}-{row['image_id']}" for copy in range(3) for row in tiny_ccr_dataset()]
    assert in_order == keys


def _loader(source, num_workers: int, batch_size: int = 3, buffer_size: int = 5) -> StreamDataLoader:
    processor = tiny_processor()
    stream = CCRStream(source, seed=1, buffer_size=buffer_size, rank=0, world_size=1)
    return StreamDataLoader(stream, batch_size=batch_size, collate_fn=_IdCollator(processor), num_workers=num_workers)


class _IdCollator:
    """Collates like training, and keeps the image ids so the test can see which samples a batch held."""

    def __init__(self, processor) -> None:
        self.collator = CCRCollator(processor, LANGUAGES)

    def __call__(self, rows):
        return {**self.collator(rows), "ids": [row["image_id"] for row in rows]}


@pytest.mark.parametrize("num_workers,stop", [(0, 5), (2, 5), (2, 14)])
def test_loader_resumes_mid_epoch_at_the_same_sample(shards, num_workers, stop):
    """Batches after a resume from the state saved after ``stop`` batches are those of an uninterrupted run
    (stop=14 is in the second epoch: 36 samples make 12 or 13 batches)."""
    source = TarShards.from_spec(shards)
    uninterrupted = _loader(source, num_workers)
    epochs = [[batch["ids"] for batch in uninterrupted] for _ in range(2)]
    assert len(sum(epochs[0], [])) == 36 and sorted(sum(epochs[0], [])) == sorted(sum(epochs[1], []))
    reference = epochs[0] + epochs[1]

    first = _loader(source, num_workers)
    seen, iterator = [], iter(first)
    while len(seen) < stop:
        try:
            seen.append(next(iterator)["ids"])
        except StopIteration:
            iterator = iter(first)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = _loader(source, num_workers)
    resumed.load_state_dict(state)
    rest = [batch["ids"] for batch in resumed]
    if stop < len(epochs[0]):
        rest += [batch["ids"] for batch in resumed]
    assert seen + rest == reference


def test_resuming_with_other_workers_is_a_clear_error(shards):
    source = TarShards.from_spec(shards)
    loader = _loader(source, 0)
    with pytest.raises(ValueError, match="same"):
        _loader(source, 2).load_state_dict(loader.state_dict())


def _write_bad_shards(folder) -> str:
    """Two shards: a sample without image, one without captions, a corrupt image, then a truncated shard."""
    good = encode(Image.new("RGB", (8, 8), (200, 0, 0)))
    captions = [{"language": "en", "text": "red"}, {"language": "de", "text": "rot"}]
    with ShardWriter(str(folder), samples_per_shard=6) as writer:
        for index in range(6):
            if index == 1:
                writer._add(f"k{index}.json", json.dumps({"captions": captions}).encode())
                writer._count += 1
            elif index == 2:
                writer.write(f"k{index}", good, [], extension="png")
            elif index == 3:
                writer.write(f"k{index}", b"\x89PNG broken", captions, extension="png")
            else:
                writer.write(f"k{index}", good, captions, extension="png")
        for index in range(6, 12):
            writer.write(f"k{index}", good, captions, extension="png")
    second = folder / "00001.tar"
    offsets = [entry[0] for entry in read_shard(str(second)) if not isinstance(entry, ShardEnd)]
    with open(second, "r+b") as handle:  # cut inside the image of the 5th sample, k10
        handle.truncate(offsets[4] + 512 + 20)
    return str(folder / "{00000..00001}.tar")


@pytest.mark.parametrize("buffer_size", [5, 3])
def test_bad_samples_are_skipped_counted_and_named(tmp_path, caplog, buffer_size):
    """With blocks of 3 the truncated end is met right after a full block: still counted."""
    pattern = _write_bad_shards(tmp_path)
    with tarfile.open(tmp_path / "00000.tar") as archive:
        assert len(archive.getnames()) == 11
    loader = _loader(TarShards.from_spec(pattern), 0, batch_size=2, buffer_size=buffer_size)
    with caplog.at_level(logging.WARNING, logger="modeling_ccr.streaming"):
        ids = [image_id for batch in loader for image_id in batch["ids"]]
    messages = "\n".join(record.getMessage() for record in caplog.records)
    for key, reason in (("k1", "no image"), ("k2", "no caption"), ("k3", "corrupt image")):
        assert key not in ids
        assert any(key in line and reason in line and "00000.tar" in line for line in messages.splitlines()), key
    assert "truncated" in messages and "00001.tar" in messages
    assert "'k10'" in messages
    assert sorted(ids) == sorted(["k0", "k4", "k5", "k6", "k7", "k8", "k9"])
    assert loader.skipped == 4  # three bad samples and one truncated shard end


def test_datasets_streaming_and_the_webdataset_builder_as_sources(shards):
    dataset = tiny_ccr_dataset().to_iterable_dataset(num_shards=4)
    seen = Counter()
    for rank in range(3):
        seen.update(_ids(CCRStream(DatasetShards(dataset), seed=0, buffer_size=4, rank=rank, world_size=3)))
    assert set(seen) == set(tiny_ccr_dataset()["image_id"]) and set(seen.values()) == {1}

    from datasets import load_dataset

    webdataset = load_dataset("webdataset", data_files={"train": sorted(TarShards.from_spec(shards).sets[0][0])},
                              split="train", streaming=True)
    rows = list(CCRStream(DatasetShards(webdataset), shuffle=False))
    reference = materialize(TarShards.from_spec(shards))
    assert [row["image_id"] for row in rows] == reference["image_id"]
    assert [row["captions"] for row in rows] == reference["captions"]
    assert rows[0]["image"].size == (32, 32)


def test_one_language_per_shard_set_joined_on_the_key(tmp_path):
    dataset = tiny_ccr_dataset()
    for language in ("en", "de"):
        with tarfile.open(tmp_path / f"{language}.tar", "w") as archive:
            for row in dataset:
                members = [(f"{row['image_id']}.txt", " / ".join(
                    c["text"] for c in row["captions"] if c["language"] == language).encode())]
                if language == "en":
                    members.insert(0, (f"{row['image_id']}.png", encode(row["image"])))
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
    stream = open_stream(f"en={tmp_path}/en.tar;de={tmp_path}/de.tar", seed=0, buffer_size=4)
    assert stream.languages == {"de", "en"}
    rows = {row["image_id"]: row for row in stream}
    assert set(rows) == set(dataset["image_id"])
    red = rows["red-square"]["captions"]
    assert red == [{"language": "en", "text": "a red square / square coloured red"},
                   {"language": "de", "text": "ein rot Quadrat"}]


class _Record(TrainerCallback):
    """Stops at ``stop_at`` (as a kill after the last checkpoint would) and records the ids of each step."""

    def __init__(self, steps: list, stop_at: int | None = None) -> None:
        self.steps, self.stop_at = steps, stop_at

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_at is not None and state.global_step >= self.stop_at:
            control.should_training_stop = True


def _train(shards, output_dir, steps: list, stop_at=None, resume=False, num_workers=0):
    set_seed(0)
    processor = tiny_processor()
    model = tiny_model(processor, num_fusion_layers=1, seed=0)
    stream = CCRStream(TarShards.from_spec(shards), languages=LANGUAGES, seed=7, buffer_size=5)
    args = CCRTrainingArguments(
        output_dir=str(output_dir), max_steps=10, per_device_train_batch_size=4, learning_rate=1e-3,
        save_strategy="steps", save_steps=3, logging_steps=1, report_to="none", seed=0, disable_tqdm=True,
        use_cpu=True, dataloader_num_workers=num_workers, mlm_probability=0.3,
    )
    collator = CCRCollator(processor, LANGUAGES)

    def collate(rows):
        steps.append([row["image_id"] for row in rows])
        return collator(rows)

    trainer = CCRTrainer(model=model, args=args, train_dataset=stream, processing_class=processor,
                         languages=LANGUAGES, data_collator=collate, callbacks=[_Record(steps, stop_at)])
    trainer.train(resume_from_checkpoint=True if resume else None)
    return trainer, model


@pytest.mark.parametrize("num_workers", [0, 2])
def test_training_stopped_and_resumed_sees_the_same_samples_and_ends_with_the_same_weights(shards, tmp_path,
                                                                                           num_workers):
    """10 steps of 4 over 36 samples cross an epoch; the interrupted run stops at step 8 (last checkpoint 6)."""
    full_steps: list = []
    _, full = _train(shards, tmp_path / "full", full_steps, num_workers=num_workers)
    if num_workers == 0:  # with workers, the collator runs in them and records nothing here
        assert len(full_steps) == 10 and sorted(sum(full_steps[:9], [])) == sorted(
            f"{c}-{row['image_id']}" for c in range(3) for row in tiny_ccr_dataset())

    first_steps: list = []
    _train(shards, tmp_path / "cut", first_steps, stop_at=8, num_workers=num_workers)
    resumed_steps: list = []
    trainer, resumed = _train(shards, tmp_path / "cut", resumed_steps, resume=True, num_workers=num_workers)
    assert first_steps[:6] + resumed_steps == full_steps
    for name, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert stream_skipped(trainer) == 0
    state = json.loads((tmp_path / "cut" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["StreamStateCallback"]["attributes"]["positions"][0]["epoch"] == 0


def test_a_stream_needs_max_steps_and_languages(shards, tmp_path):
    processor = tiny_processor()
    stream = CCRStream(TarShards.from_spec(shards))
    args = CCRTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="languages"):
        CCRTrainer(model=tiny_model(processor), args=args, train_dataset=stream, processing_class=processor)
    with pytest.raises(ValueError, match="max_steps"):
        CCRTrainer(model=tiny_model(processor), args=args, train_dataset=stream, processing_class=processor,
                   languages=LANGUAGES)


def test_rows_carry_their_position_only_inside_the_loader(shards):
    row = next(iter(CCRStream(TarShards.from_spec(shards), seed=0)))
    assert set(row) == {"image", "image_id", "captions", STATE_KEY}
    batch = next(iter(_loader(TarShards.from_spec(shards), 0)))
    assert STATE_KEY not in batch


@pytest.mark.slow
def test_train_script_trains_from_shards_and_reports_skipped_samples(shards, tmp_path):
    """train.py --dataset '<dir>/{0..1}.tar': bad samples skipped, their count in eval_results.json; resumable.
    Four steps of two are exactly the seven good samples: one epoch, each bad sample skipped once."""
    import subprocess
    import sys
    from pathlib import Path

    train = Path(__file__).resolve().parents[1] / "hub_scripts" / "train.py"
    bad = _write_bad_shards(tmp_path / "bad")
    options = ["--dataset", bad, "--eval_dataset", shards, "--languages", "en,de", "--per_device_train_batch_size",
               "2", "--image_size", "32", "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no",
               "--report_to", "none", "--vocab_size", "100", "--disable_tqdm", "true", "--output_dir",
               str(tmp_path / "run"), "--max_eval_samples", "8", "--projection_dim", "16"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, str(train), *options, "--max_steps", "2"], capture_output=True,
                               text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    completed = subprocess.run([sys.executable, str(train), *options, "--max_steps", "4", "--resume_from_checkpoint",
                                "last"], capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "'k3'" in completed.stderr and "corrupt image" in completed.stderr
    results = json.loads((tmp_path / "run" / "model" / "eval_results.json").read_text())
    assert results["skipped_samples"] == 4
    state = json.loads((tmp_path / "run" / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    position = state["stateful_callbacks"]["StreamStateCallback"]["attributes"]["positions"][0]
    assert position["epoch"] == 0 and position["readers"]["0"]["skipped"] == 4


@pytest.mark.parametrize("extra,message", [
    ([], "--eval_dataset"),
    (["--eval_dataset", "emoji"], "--max_steps"),
    (["--eval_dataset", "emoji", "--max_steps", "3", "--max_train_samples", "5"], "--max_train_samples"),
])
def test_train_script_rejects_incomplete_stream_options_before_training(shards, tmp_path, extra, message):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "hub_scripts" / "train.py"
    spec = importlib.util.spec_from_file_location("train_script", path)
    train = importlib.util.module_from_spec(spec)
    sys.modules["train_script"] = train  # dataclasses look their module up there
    spec.loader.exec_module(train)
    with pytest.raises(ValueError, match=message):  # run_cli turns it into one line and exit status 2
        train.main(["--dataset", shards, "--output_dir", str(tmp_path / "out"), *extra])
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow
def test_two_processes_split_the_stream_and_resume_it(shards, tmp_path):
    """torchrun, 2 gloo processes: disjoint samples per rank; stopped at step 5 (checkpoint 4) and resumed, each
    rank sees what it saw uninterrupted and the final weights are identical."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    worker = Path(__file__).resolve().with_name("_stream_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(output: str, ids: str, *mode: str) -> None:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   str(worker), shards, str(tmp_path / output), str(tmp_path / ids), *mode]
        completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert completed.returncode == 0, completed.stderr[-4000:]

    def ids(name: str, rank: int) -> list:
        return json.loads((tmp_path / f"{name}-rank{rank}.json").read_text())

    run("full", "full")
    run("cut", "first", "5")
    run("cut", "resumed", "resume")
    full = [ids("full", rank) for rank in range(2)]
    assert not set(sum(full[0], [])) & set(sum(full[1], []))
    for rank in range(2):
        assert ids("first", rank)[:4] + ids("resumed", rank) == full[rank]
    expected, got = load_file(tmp_path / "full" / "final.safetensors"), load_file(tmp_path / "cut" / "final.safetensors")
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
