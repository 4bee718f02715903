"""Speed of the 1-to-K loss and of a CCRModel training step, each against its plain counterpart, side by side.

(a) 1-to-K loss forward+backward (B images, K captions each, D dims: logits (B, B*K)) against cross-entropy on the
    same (B x BK) logits computed from the same embeddings: "ce" = torch's cross_entropy over the rows with one
    target per image (the reference of the ratio), "clip" = the symmetric CLIP loss (rows and columns).
(b) One training step (forward, backward, AdamW) of CCRModel with 0 fusion layers against transformers'
    VisionTextDualEncoderModel with identical towers (same weights) and its CLIP loss, on the same batch; and the
    bf16 mixed-precision step of CCRModel (fp32 weights, bf16 autocast as Trainer's --bf16, logits in fp32)
    against the same fp32 VisionTextDualEncoderModel step.

The runs being compared are interleaved, repeated, and summarised by medians (the machine is shared and noisy).
The last line reads `loss_ratio=<x> train_step_ratio=<y> bf16_train_step_ratio=<z>`: loss_ratio = time(1-to-K) / time(ce), lower is better
(target <= 1.2); train_step_ratio = throughput(CCRModel) / throughput(VisionTextDualEncoderModel), higher is
better (target >= 0.95); bf16_train_step_ratio = throughput(CCRModel bf16) / throughput(VisionTextDualEncoderModel
fp32), higher is better (target >= 2.0).

    python benchmarks/bench_model.py            # full run
    python benchmarks/bench_model.py --quick    # a few seconds, for tests
    python benchmarks/bench_model.py --device cuda --size base   # on a GPU: ViT-B/16 and BERT-base sizes
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402
from transformers import BertConfig, BertModel, VisionTextDualEncoderModel, ViTConfig, ViTModel  # noqa: E402

from modeling_ccr import CCRModel, one_to_k_contrastive_loss  # noqa: E402
from modeling_ccr.configuration_ccr import CCRConfig  # noqa: E402

# Tower widths (hidden, layers, heads, MLP), image size, and the train step's batch and text length, per --size.
TOWER_SIZES = {
    "tiny": dict(hidden=64, layers=2, heads=4, mlp=128, image_size=64, batch_size=8, seq_len=16),
    "small": dict(hidden=192, layers=4, heads=4, mlp=768, image_size=96, batch_size=32, seq_len=32),
    "base": dict(hidden=768, layers=12, heads=12, mlp=3072, image_size=224, batch_size=128, seq_len=64),
}


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--size``, shared by the benchmarks that time training steps."""
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where both sides run (cuda: timings wait for the GPU; memory is the CUDA allocator's)")
    parser.add_argument("--size", default=None, choices=tuple(TOWER_SIZES),
                        help="tower sizes: tiny (--quick's), small (the CPU default), base (ViT-B/16 and BERT-base "
                             "widths, for a GPU)")


def resolve_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """The device asked for, or a parser error (exit 2, one line) when this torch cannot use it."""
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    if args.size is None:
        args.size = "tiny" if args.quick else "small"
    elif args.quick and args.size != "tiny":
        parser.error(f"--quick runs the tiny sizes; it cannot be combined with --size {args.size}")
    return torch.device(args.device)


def synchronize(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (a CUDA call returns before its kernels have run)."""
    if torch.device(device or "cpu").type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(fns: dict[str, Callable[[], None]], repeats: int, inner: int, warmup: int, desc: str,
                        device: torch.device | str | None = None) -> dict[str, float]:
    """Run every fn `warmup` times, then `repeats` rounds of `inner` calls each, alternating between fns; on a GPU
    each timing waits for the queued kernels."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in tqdm(range(repeats), desc=desc, leave=False):
        order = names if r % 2 == 0 else names[::-1]  # alternate who goes first
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(inner):
                fns[name]()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_loss(B: int, K: int, D: int, repeats: int, inner: int, device: torch.device | None = None) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(B, D, generator=g), dim=-1).to(device).requires_grad_(True)
    text = F.normalize(torch.randn(B * K, D, generator=g), dim=-1).to(device).requires_grad_(True)
    text_image_ids = torch.arange(B, device=device).repeat_interleave(K)
    first_caption = torch.arange(B, device=device) * K
    tau = torch.tensor(0.07, device=device, requires_grad=True)

    def one_to_k():
        one_to_k_contrastive_loss(image, text, text_image_ids, tau).backward()

    def ce():
        logits = image @ text.t() / tau  # (B, BK)
        F.cross_entropy(logits, first_caption).backward()

    def clip():
        logits = image @ text.t() / tau
        ((F.cross_entropy(logits, first_caption) + F.cross_entropy(logits.t(), text_image_ids)) / 2).backward()

    return interleaved_medians({"1-to-K": one_to_k, "ce": ce, "clip": clip}, repeats, inner, 5, "loss", device)


def build_towers(size: str):
    shape = TOWER_SIZES[size]
    widths = dict(hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                  num_attention_heads=shape["heads"], intermediate_size=shape["mlp"])
    vision = ViTConfig(image_size=shape["image_size"], patch_size=16, **widths)
    text = BertConfig(vocab_size=1000, max_position_embeddings=64, **widths)
    torch.manual_seed(0)
    return ViTModel(vision), BertModel(text)


def bench_train_step(size: str, repeats: int, inner: int, device: torch.device | None = None) -> dict[str, float]:
    vit, bert = build_towers(size)
    batch_size, seq_len = TOWER_SIZES[size]["batch_size"], TOWER_SIZES[size]["seq_len"]
    ccr_config = CCRConfig.from_vision_text_configs(vit.config, bert.config, projection_dim=128, num_fusion_layers=0)
    ccr = CCRModel(ccr_config, vision_model=copy.deepcopy(vit), text_model=copy.deepcopy(bert)).to(device).train()
    vtde = VisionTextDualEncoderModel(vision_model=copy.deepcopy(vit), text_model=copy.deepcopy(bert)).to(device).train()
    g = torch.Generator().manual_seed(1)
    image_size = vit.config.image_size
    batch = {
        "pixel_values": torch.randn(batch_size, 3, image_size, image_size, generator=g).to(device),
        "input_ids": torch.randint(5, 1000, (batch_size, seq_len), generator=g).to(device),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long, device=device),
    }
    text_image_ids = torch.arange(batch_size, device=device)
    autocast_device = torch.device(device or "cpu").type
    opt_ccr = torch.optim.AdamW(ccr.parameters(), lr=1e-5)
    ccr_bf16 = copy.deepcopy(ccr)  # fp32 weights, bf16 autocast: what Trainer's --bf16 runs
    opt_bf16 = torch.optim.AdamW(ccr_bf16.parameters(), lr=1e-5)
    opt_vtde = torch.optim.AdamW(vtde.parameters(), lr=1e-5)

    def step_ccr():
        loss = ccr(**batch, text_image_ids=text_image_ids, return_loss=True).loss
        opt_ccr.zero_grad(set_to_none=True)
        loss.backward()
        opt_ccr.step()

    def step_ccr_bf16():
        with torch.autocast(device_type=autocast_device, dtype=torch.bfloat16):
            loss = ccr_bf16(**batch, text_image_ids=text_image_ids, return_loss=True).loss
        opt_bf16.zero_grad(set_to_none=True)
        loss.backward()
        opt_bf16.step()

    def step_vtde():
        loss = vtde(**batch, return_loss=True).loss
        opt_vtde.zero_grad(set_to_none=True)
        loss.backward()
        opt_vtde.step()

    steps = {"CCRModel": step_ccr, "CCRModel bf16": step_ccr_bf16, "VisionTextDualEncoderModel": step_vtde}
    return interleaved_medians(steps, repeats, inner, 2, "train step", device)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a few seconds)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides")
    parser.add_argument("--repeats", type=int, default=None)
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    device = resolve_device(parser, args)
    torch.set_num_threads(args.threads)

    B, K, D = {"tiny": (32, 6, 64), "small": (128, 6, 256), "base": (512, 6, 512)}[args.size]
    repeats = args.repeats or (3 if args.quick else 21)
    loss_times = bench_loss(B, K, D, repeats, inner=2 if args.quick else 10, device=device)
    print(f"(a) loss fwd+bwd, B={B} K={K} D={D} logits {B}x{B * K}, {args.device}, threads={args.threads}, "
          f"median of {repeats}:")
    for name, seconds in loss_times.items():
        print(f"    {name:>8}: {seconds * 1e3:8.3f} ms")
    loss_ratio = loss_times["1-to-K"] / loss_times["ce"]
    print(f"    1-to-K / ce = {loss_ratio:.3f}   1-to-K / clip = {loss_times['1-to-K'] / loss_times['clip']:.3f}")

    batch_size, seq_len = TOWER_SIZES[args.size]["batch_size"], TOWER_SIZES[args.size]["seq_len"]
    step_times = bench_train_step(args.size, repeats, inner=1 if args.quick else 2, device=device)
    print(f"(b) train step (fwd+bwd+AdamW), ViT+BERT {args.size}, batch {batch_size}, seq {seq_len}, {args.device}, "
          f"median of {repeats}:")
    for name, seconds in step_times.items():
        print(f"    {name:>27}: {seconds * 1e3:8.2f} ms/step  {batch_size / seconds:8.1f} pairs/s")
    train_step_ratio = step_times["VisionTextDualEncoderModel"] / step_times["CCRModel"]
    bf16_ratio = step_times["VisionTextDualEncoderModel"] / step_times["CCRModel bf16"]
    print(f"loss_ratio={loss_ratio:.3f} train_step_ratio={train_step_ratio:.3f} bf16_train_step_ratio={bf16_ratio:.3f}")
    return {"loss_ratio": loss_ratio, "train_step_ratio": train_step_ratio, "bf16_train_step_ratio": bf16_ratio}


if __name__ == "__main__":
    main()
