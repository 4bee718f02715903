#!/usr/bin/env python
"""Training from tar shards: memory flat in corpus size, throughput against the in-memory path.

One synthetic corpus of 1M samples is written once to a temporary folder (16x16 JPEGs drawn from a pool
of 256, a caption in each of 6 languages, 10k samples per shard, webdataset layout); the 10k and 100k
corpora are its first 1 and 10 shards.

- Memory: for each corpus size a fresh child process streams a fixed number of samples through the
  training pipeline (CCRStream, shuffled, + StreamDataLoader + CCRCollator) and then trains a tiny model for
  a fixed number of steps from the stream; its peak RSS is reported. The in-memory reference (the corpus as
  a ``datasets.Dataset`` held in memory, read the way Trainer reads map-style data: shuffled DataLoader,
  same collator) runs in children too, for 10k and 100k.
- Speed: one child interleaves rounds of the stream (1M corpus) and of the in-memory path (10k), pipeline
  alone and training steps, and reports medians over the rounds.

    python benchmarks/bench_stream.py            # full run (a few minutes; run under flock /tmp/cpu.lock)
    python benchmarks/bench_stream.py --quick    # smoke test: 1k/2k/4k samples
Last line: ``rss_ratio_1m_vs_10k=<x> throughput_vs_in_memory=<y>`` with x the peak RSS of the largest corpus's
stream child over the smallest's, y the training samples/s streaming from the largest corpus over the
in-memory path's on the smallest (median of interleaved rounds).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LANGUAGES = ["cs", "de", "en", "fr", "ja", "zh"]
WORDS = {
    "en": "a small picture of a coloured square number %d",
    "de": "ein kleines Bild eines farbigen Quadrats Nummer %d",
    "fr": "une petite image d'un carré coloré numéro %d",
    "cs": "malý obrázek barevného čtverce číslo %d",
    "zh": "彩色方块的小图片 第%d号",
    "ja": "色付きの四角の小さな絵 %d番",
}
BATCH = 64


def write_corpus(folder: str, samples: int, per_shard: int) -> float:
    """The synthetic corpus as ``00000.tar``, ``00001.tar``, ... (written once, reused by every measurement)."""
    from PIL import Image
    from tqdm import tqdm

    from modeling_ccr.shards import ShardWriter

    start = time.perf_counter()
    rng = random.Random(0)
    pool = []
    for _ in range(256):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), tuple(rng.randrange(256) for _ in range(3))).save(buffer, "JPEG", quality=85)
        pool.append(buffer.getvalue())
    template = json.dumps({"captions": [{"language": lang, "text": WORDS[lang]} for lang in LANGUAGES]},
                          ensure_ascii=False)
    with ShardWriter(folder, per_shard) as writer:
        for index in tqdm(range(samples), desc="writing the corpus", unit="sample", unit_scale=True, mininterval=2):
            writer.add_sample(f"{index:09d}", pool[index % len(pool)], (template % ((index,) * 6)).encode())
    return time.perf_counter() - start


def _pattern(folder: str, samples: int, per_shard: int) -> str:
    last = f"{samples // per_shard - 1:05d}"
    return os.path.join(folder, "{00000.." + last + "}.tar")


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Setup:
    """What a child needs: processor, tiny model and optimizer, and the two data paths."""

    def __init__(self, processor_dir: str) -> None:
        import torch
        from transformers import BertConfig, ViTConfig

        from modeling_ccr import CCRConfig, CCRModel, CCRProcessor
        from modeling_ccr.collator import CCRCollator

        self.torch = torch
        self.processor = CCRProcessor.from_pretrained(processor_dir)
        self.collator = CCRCollator(self.processor, LANGUAGES)
        torch.manual_seed(0)
        vision = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=128)
        text = BertConfig(vocab_size=len(self.processor.tokenizer), hidden_size=64, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=128, max_position_embeddings=24,
                          pad_token_id=self.processor.tokenizer.pad_token_id)
        self.model = CCRModel(CCRConfig.from_vision_text_configs(vision, text, projection_dim=32,
                                                                 text_pooling="mean", vision_pooling="mean"))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def stream_loader(self, pattern: str):
        from modeling_ccr.streaming import CCRStream, StreamDataLoader, TarShards

        stream = CCRStream(TarShards.from_spec(pattern), languages=LANGUAGES, seed=0, buffer_size=1000)
        return StreamDataLoader(stream, batch_size=BATCH, collate_fn=self.collator)

    def memory_loader(self, pattern: str):
        from datasets import Dataset
        from torch.utils.data import DataLoader

        from modeling_ccr.dataset_schema import CCR_FEATURES
        from modeling_ccr.streaming import Item, TarShards

        source = TarShards.from_spec(pattern)
        columns: dict[str, list] = {"image": [], "image_id": [], "captions": []}
        for shard in range(source.num_shards):
            for item in source.read(shard, 0):
                if isinstance(item, Item):
                    columns["image"].append({"bytes": item.image, "path": None})
                    columns["image_id"].append(item.key)
                    columns["captions"].append(item.captions)
        dataset = Dataset.from_dict(columns, features=CCR_FEATURES)
        generator = self.torch.Generator().manual_seed(0)
        return DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=generator, collate_fn=self.collator)

    def train_step(self, batch) -> None:
        from modeling_ccr.collator import sample_captions

        batch = sample_captions(batch, 1)
        batch.pop("text_language_ids")
        self.model(**batch, return_loss=True).loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def _batches(loader, state: dict):
    """Endless batches of ``loader`` (a new epoch when one ends), continuing where the last call stopped."""
    while True:
        if state.get("iterator") is None:
            state["iterator"] = iter(loader)
        try:
            yield next(state["iterator"])
        except StopIteration:
            state["iterator"] = None


def _pipeline(batches, samples: int) -> float:
    """Samples per second of reading + decoding + collating ``samples`` samples."""
    start, seen = time.perf_counter(), 0
    while seen < samples:
        seen += next(batches)["pixel_values"].shape[0]
    return seen / (time.perf_counter() - start)


def _training(setup: _Setup, batches, steps: int) -> float:
    """Samples per second of ``steps`` training steps fed by ``batches``."""
    start, seen = time.perf_counter(), 0
    for _ in range(steps):
        batch = next(batches)
        seen += batch["pixel_values"].shape[0]
        setup.train_step(batch)
    return seen / (time.perf_counter() - start)


def child_memory(processor_dir: str, mode: str, pattern: str, samples: int, steps: int) -> dict:
    setup = _Setup(processor_dir)
    base = _rss_mb()
    loader = setup.stream_loader(pattern) if mode == "stream" else setup.memory_loader(pattern)
    state: dict = {}
    batches = _batches(loader, state)
    pipeline = _pipeline(batches, samples)
    training = _training(setup, batches, steps)
    return {"base_rss_mb": base, "peak_rss_mb": _peak_rss_mb(), "pipeline_sps": pipeline, "train_sps": training}


def child_speed(processor_dir: str, large: str, small: str, samples: int, steps: int, rounds: int) -> dict:
    """Stream (large corpus) and in-memory (small corpus) alternate batch by batch (ABBA), so that whatever
    else the shared machine runs slows both alike; samples/s per round, medians over rounds."""
    setup = _Setup(processor_dir)
    paths = {"stream": _batches(setup.stream_loader(large), {}), "memory": _batches(setup.memory_loader(small), {})}
    results: dict[str, list[float]] = {f"{mode}_{kind}": [] for mode in paths for kind in ("pipeline", "train")}
    for _ in range(rounds):
        for kind, count in (("pipeline", samples // BATCH), ("train", steps)):
            elapsed, seen = dict.fromkeys(paths, 0.0), dict.fromkeys(paths, 0)
            for index in range(count):
                for mode in (list(paths) if index % 2 == 0 else list(reversed(paths))):
                    start = time.perf_counter()
                    batch = next(paths[mode])
                    if kind == "train":
                        setup.train_step(batch)
                    elapsed[mode] += time.perf_counter() - start
                    seen[mode] += batch["pixel_values"].shape[0]
            for mode in paths:
                results[f"{mode}_{kind}"].append(seen[mode] / elapsed[mode])
    return {name: statistics.median(values) for name, values in results.items()}


def _run_child(arguments: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    completed = subprocess.run([sys.executable, __file__, "--child", *arguments], capture_output=True, text=True,
                               env=env)
    if completed.returncode != 0:
        raise SystemExit(f"child {arguments[:2]} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny corpora (1k/2k/4k), for a smoke test")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each child")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        kind, *rest = args.child
        if kind == "memory":
            result = child_memory(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]))
        else:
            result = child_speed(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]), int(rest[5]))
        print(json.dumps(result))
        return

    if args.quick:
        sizes, per_shard, samples, steps, rounds = [1000, 2000, 4000], 250, 512, 2, 1
    else:
        sizes, per_shard, samples, steps, rounds = [10_000, 100_000, 1_000_000], 10_000, 20_000, 40, 5
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as folder:
        written = write_corpus(folder, sizes[-1], per_shard)
        size_gb = sum(p.stat().st_size for p in Path(folder).glob("*.tar")) / 1e9
        processor_dir = os.path.join(folder, "processor")
        _save_processor(processor_dir)
        patterns = {size: _pattern(folder, size, per_shard) for size in sizes}
        print(f"corpus: {sizes[-1]:,} samples in {sizes[-1] // per_shard} shards, {size_gb:.2f} GB, "
              f"written in {written:.1f} s; each child reads {samples:,} samples then trains {steps} steps "
              f"of {BATCH}")
        memory = {}
        for mode, mode_sizes in (("stream", sizes), ("memory", sizes[:2])):
            for size in mode_sizes:
                memory[mode, size] = _run_child(["memory", processor_dir, mode, patterns[size], str(samples),
                                                 str(steps)], args.threads)
        speed = _run_child(["speed", processor_dir, patterns[sizes[-1]], patterns[sizes[0]], str(samples // 4),
                            str(steps // 2), str(rounds)], args.threads)

    print(f"\n{'path':<10} {'corpus':>10} {'peak RSS MB':>12} {'above base MB':>14} {'pipeline/s':>11} {'train/s':>8}")
    for (mode, size), result in memory.items():
        print(f"{mode:<10} {size:>10,} {result['peak_rss_mb']:>12.0f} {result['peak_rss_mb'] - result['base_rss_mb']:>14.0f}"
              f" {result['pipeline_sps']:>11.0f} {result['train_sps']:>8.0f}")
    pipeline_ratio = speed["stream_pipeline"] / speed["memory_pipeline"]
    train_ratio = speed["stream_train"] / speed["memory_train"]
    print(f"\ninterleaved, median of {rounds} rounds: pipeline stream({sizes[-1]:,}) {speed['stream_pipeline']:.0f}/s "
          f"vs in-memory({sizes[0]:,}) {speed['memory_pipeline']:.0f}/s = {pipeline_ratio:.2f}x; training "
          f"{speed['stream_train']:.0f}/s vs {speed['memory_train']:.0f}/s = {train_ratio:.2f}x")
    rss_ratio = memory["stream", sizes[-1]]["peak_rss_mb"] / memory["stream", sizes[0]]["peak_rss_mb"]
    print(f"pipeline_vs_in_memory={pipeline_ratio:.2f}")
    print(f"rss_ratio_1m_vs_10k={rss_ratio:.3f} throughput_vs_in_memory={train_ratio:.2f}")


def _save_processor(folder: str) -> None:
    from transformers import ViTImageProcessorPil

    from modeling_ccr import CCRProcessor
    from modeling_ccr.tokenizer_training import train_tokenizer

    texts = [WORDS[lang] % index for lang in LANGUAGES for index in range(2000)]
    tokenizer = train_tokenizer(texts, vocab_size=2000, model_max_length=20)
    image_processor = ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    CCRProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


if __name__ == "__main__":
    main()
