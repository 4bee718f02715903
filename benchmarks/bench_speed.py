"""Speed-ups of issue #13, each against its reference in the same run, interleaved, as ratios.

(a) training step (forward, backward, AdamW) of CCRModel: bf16 mixed precision, frozen vision tower, frozen text
    tower, frozen vision tower with 1 unfrozen layer — each against the fp32 step with both towers trained;
(b) evaluation encoding (images and texts, no gradient): bf16 autocast against fp32, and the share of R@1 text
    queries whose rank of the gold image is the same in both (rank agreement);
(c) peak memory of one training step with accumulated negatives (``--contrastive_accumulation_steps N`` on a
    batch of N x b images) against one micro-batch of b images and against the plain N x b batch, each measured in
    a fresh process as the rise of its peak resident memory (VmHWM, reset just before) over the step;
(d) training step on a real EmojiCCR batch (``CCRCollator``, a caption per language: names and keyword lists):
    CCRModel, whose text tower runs the batch in length groups, against transformers' VisionTextDualEncoderModel
    with the same towers, which pads every text to the longest.

The last line reads ``bf16_step=<x> freeze_vision_step=<x> freeze_text_step=<x> unfrozen1_step=<x>
bf16_encode=<x> r1_rank_agreement=<%> accum_memory_vs_micro=<x> big_batch_memory_vs_micro=<x>
length_groups_step=<x>``: step and encode ratios are time(reference) / time(variant), higher is faster; memory
ratios peak(variant) / peak(micro-batch).

    python benchmarks/bench_speed.py             # main-job sizes
    python benchmarks/bench_speed.py --quick     # a few seconds
    python benchmarks/bench_speed.py --device cuda --size base    # on a GPU: ViT-B/16 and BERT-base widths

On a GPU, memory (c) is the rise of the CUDA allocator's peak over the step (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_model import add_device_arguments, interleaved_medians, resolve_device  # noqa: E402
from transformers import BertConfig, ViTConfig  # noqa: E402

from modeling_ccr import CCRConfig, CCRModel  # noqa: E402
from modeling_ccr.contrastive_accumulation import accumulated_contrastive_step  # noqa: E402
from modeling_ccr.freezing import freeze_towers  # noqa: E402
from modeling_ccr.retrieval import _to_device  # noqa: E402
from modeling_ccr.trainer import ccr_training_loss  # noqa: E402

# (image size, patch, layers, hidden, heads) per --size: tiny for --quick; small, the tiny-vit / tiny-bert presets'
# sizes (the main job's until round 3; the README's CPU figures were measured with them); base, ViT-B/16 and BERT-base
# widths for a GPU.
MODEL_SIZES = {"tiny": (32, 4, 2, 32, 4), "small": (64, 8, 3, 128, 4), "base": (224, 16, 12, 768, 12)}
# Images per training batch and per encoding batch.
BATCH_IMAGES = {"tiny": (16, 64), "small": (64, 256), "base": (128, 512)}


def build_model(size: str = "small", device: torch.device | None = None) -> CCRModel:
    """A CCRModel with ViT and BERT towers of ``MODEL_SIZES[size]``, in training mode, on ``device``."""
    image_size, patch, layers, hidden, heads = MODEL_SIZES[size]
    vision = ViTConfig(image_size=image_size, patch_size=patch, hidden_size=hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * hidden,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    text = BertConfig(vocab_size=8000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=4 * hidden, max_position_embeddings=32)
    torch.manual_seed(0)
    config = CCRConfig.from_vision_text_configs(vision, text, projection_dim=256, num_fusion_layers=0,
                                                text_pooling="mean", vision_pooling="mean")
    return CCRModel(config).to(device).train()


def make_batch(model: CCRModel, images: int, captions: int = 6, seq_len: int = 16, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    size = model.config.vision_config.image_size
    texts = images * captions
    batch = {
        "pixel_values": torch.randn(images, 3, size, size, generator=g),
        "input_ids": torch.randint(5, 8000, (texts, seq_len), generator=g),
        "attention_mask": torch.ones(texts, seq_len, dtype=torch.long),
        "text_image_ids": torch.arange(images).repeat_interleave(captions),
        "text_language_ids": torch.arange(captions).repeat(images),
    }
    return _to_device(batch, model.device)


def bench_steps(size: str, repeats: int, device: torch.device | None = None) -> dict[str, float]:
    base = build_model(size, device)
    batch = make_batch(base, BATCH_IMAGES[size][0])
    variants = {
        "fp32": (copy.deepcopy(base), False),
        "bf16": (copy.deepcopy(base), True),
        "freeze_vision": (copy.deepcopy(base), False),
        "freeze_text": (copy.deepcopy(base), False),
        "unfrozen1": (copy.deepcopy(base), False),
    }
    freeze_towers(variants["freeze_vision"][0], freeze_vision=True)
    freeze_towers(variants["freeze_text"][0], freeze_text=True)
    freeze_towers(variants["unfrozen1"][0], freeze_vision=True, unfrozen_layers=1)

    def step_fn(model, bf16):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        def step():
            with torch.autocast(base.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = ccr_training_loss(model, batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    fns = {name: step_fn(model, bf16) for name, (model, bf16) in variants.items()}
    return interleaved_medians(fns, repeats, 1, 2, "train steps", device)


def bench_encoding(size: str, repeats: int, device: torch.device | None = None) -> tuple[dict[str, float], float]:
    model = build_model(size, device).eval()
    batch = make_batch(model, BATCH_IMAGES[size][1], captions=6, seed=2)

    def encode(bf16: bool):
        with torch.no_grad(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            images = model.get_image_features(pixel_values=batch["pixel_values"]).float()
            texts = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).float()
        return images, texts

    times = interleaved_medians({"fp32": lambda: encode(False), "bf16": lambda: encode(True)}, repeats, 1, 1, "encode",
                                device)
    ranks = {}
    for bf16 in (False, True):
        images, texts = encode(bf16)
        scores = torch.nn.functional.normalize(texts, dim=-1) @ torch.nn.functional.normalize(images, dim=-1).T
        gold = scores.gather(1, batch["text_image_ids"][:, None])
        ranks[bf16] = (scores > gold).sum(1) + 1
    agreement = 100.0 * float(((ranks[False] == 1) == (ranks[True] == 1)).float().mean())
    return times, agreement


def emoji_batch(images: int, image_size: int, max_length: int = 32, seed: int = 3) -> dict:
    """A real training batch, made as CCRTrainer makes it: EmojiCCR rows through ``CCRCollator`` (a tokenizer trained
    on the training captions), then one caption per image and language (a name or a keyword list) by
    ``sample_captions``."""
    from transformers import ViTImageProcessorPil

    from modeling_ccr import CCRProcessor
    from modeling_ccr.collator import CCRCollator, sample_captions
    from modeling_ccr.dataset_schema import dataset_languages
    from modeling_ccr.emoji_dataset import emoji_training_texts, load_emoji_ccr
    from modeling_ccr.tokenizer_training import train_tokenizer

    train = load_emoji_ccr("train")
    tokenizer = train_tokenizer(emoji_training_texts(train), vocab_size=8000, model_max_length=max_length)
    processor = CCRProcessor(ViTImageProcessorPil(size={"height": image_size, "width": image_size}), tokenizer)
    batch = CCRCollator(processor, dataset_languages(train))([train[row] for row in range(images)])
    torch.manual_seed(seed)
    return sample_captions(batch, captions_per_language=1)


def bench_length_groups(size: str, repeats: int, device: torch.device | None = None) -> tuple[dict[str, float], float]:
    """(d) A training step on real EmojiCCR texts of mixed lengths: CCRModel, whose text tower runs the batch in
    length groups, against transformers' VisionTextDualEncoderModel with the same towers and weights, which runs
    it in one call padded to the longest caption; both with the 1-to-K loss (64 images, a caption per language).
    Returns the medians and the share of padding in the batch."""
    from transformers import BertModel, VisionTextDualEncoderModel, ViTModel

    from modeling_ccr.modeling_ccr import one_to_k_loss_from_logits

    ccr = build_model(size, device)
    vision, text = ViTModel(ccr.config.vision_config), BertModel(ccr.config.text_config)  # with the poolers CLIP's
    vision.load_state_dict(ccr.vision_model.state_dict(), strict=False)                  # loss reads
    text.load_state_dict(ccr.text_model.state_dict(), strict=False)
    vtde = VisionTextDualEncoderModel(vision_model=vision, text_model=text).to(device).train()
    batch = _to_device(emoji_batch(BATCH_IMAGES[size][0], ccr.config.vision_config.image_size,
                                   max_length=ccr.config.text_config.max_position_embeddings), ccr.device)
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-5) for name, model in (("ccr", ccr), ("vtde", vtde))}

    def step_ccr():
        loss = ccr_training_loss(ccr, batch).loss
        optimizers["ccr"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["ccr"].step()

    def step_vtde():  # the same 1-to-K loss on its logits (its own CLIP loss needs one text per image)
        logits = vtde(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      pixel_values=batch["pixel_values"]).logits_per_image
        loss = one_to_k_loss_from_logits(logits, batch["text_image_ids"])
        optimizers["vtde"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["vtde"].step()

    times = interleaved_medians({"CCRModel": step_ccr, "VisionTextDualEncoderModel": step_vtde}, repeats, 1, 2,
                                "length groups", device)
    return times, 100.0 * (1.0 - float(batch["attention_mask"].float().mean()))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_step_memory(size: str, images: int, accumulation_steps: int, device: str = "cpu") -> float:
    """Rise of peak memory (MiB) over one training step. On the CPU, of the resident set: the peak is reset
    (clear_refs 5) just before; on a GPU, of the CUDA allocator's peak, reset just before."""
    model = build_model(size, torch.device(device))
    batch = make_batch(model, images)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        one_step(model, batch, accumulation_steps)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    one_step(model, batch, accumulation_steps)
    return (_status_kib("VmHWM") - before) / 1024


def _peak_rise(size: str, images: int, accumulation_steps: int, device: torch.device) -> float:
    """:func:`measure_step_memory` in a fresh process (allocator state of its own)."""
    here = str(Path(__file__).resolve().parent)
    code = (f"import sys, torch; sys.path.insert(0, {here!r}); import bench_speed as b; torch.set_num_threads(1); "
            f"print(b.measure_step_memory({size!r}, {images}, {accumulation_steps}, {str(device)!r}))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(completed.stdout.strip().splitlines()[-1])


def one_step(model: CCRModel, batch: dict, accumulation_steps: int) -> None:
    if accumulation_steps > 1:
        accumulated_contrastive_step(model, batch, accumulation_steps)
    else:
        ccr_training_loss(model, batch).loss.backward()


def bench_memory(size: str, n: int, device: torch.device) -> dict[str, float]:
    micro = BATCH_IMAGES[size][0]
    return {
        "micro": _peak_rise(size, micro, 1, device),
        "accumulated": _peak_rise(size, micro * n, n, device),
        "big_batch": _peak_rise(size, micro * n, 1, device),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--accumulation", type=int, default=4, help="N of the memory comparison")
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    device = resolve_device(parser, args)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 9)

    steps = bench_steps(args.size, repeats, device)
    print(f"(a) train step, ViT+BERT {args.size}, {args.device}, median of {repeats}, threads={args.threads}:")
    for name, seconds in steps.items():
        print(f"    {name:>14}: {seconds * 1e3:8.1f} ms  x{steps['fp32'] / seconds:.2f}")
    encode, agreement = bench_encoding(args.size, repeats, device)
    print(f"(b) encoding: fp32 {encode['fp32'] * 1e3:.1f} ms, bf16 {encode['bf16'] * 1e3:.1f} ms; "
          f"R@1 agreement {agreement:.1f} %")
    memory = bench_memory(args.size, args.accumulation, device)
    print(f"(c) peak memory rise of one step (MiB): micro-batch {memory['micro']:.0f}, "
          f"{args.accumulation} accumulated {memory['accumulated']:.0f}, one big batch {memory['big_batch']:.0f}")
    groups, padding = bench_length_groups(args.size, repeats, device)
    print(f"(d) train step on EmojiCCR texts ({padding:.0f} % padding): CCRModel {groups['CCRModel'] * 1e3:.1f} ms, "
          f"VisionTextDualEncoderModel {groups['VisionTextDualEncoderModel'] * 1e3:.1f} ms")
    result = {
        "bf16_step": steps["fp32"] / steps["bf16"],
        "freeze_vision_step": steps["fp32"] / steps["freeze_vision"],
        "freeze_text_step": steps["fp32"] / steps["freeze_text"],
        "unfrozen1_step": steps["fp32"] / steps["unfrozen1"],
        "bf16_encode": encode["fp32"] / encode["bf16"],
        "r1_rank_agreement": agreement,
        "accum_memory_vs_micro": memory["accumulated"] / max(memory["micro"], 1e-9),
        "big_batch_memory_vs_micro": memory["big_batch"] / max(memory["micro"], 1e-9),
        "length_groups_step": groups["VisionTextDualEncoderModel"] / groups["CCRModel"],
    }
    print(" ".join(f"{key}={value:.3f}" for key, value in result.items()))
    return result


if __name__ == "__main__":
    main()
