#!/usr/bin/env python
"""Training-step speed and peak memory of CCRModel with 0 and with 2 fusion layers (MITM + CMLM).

Both sizes run in one process, interleaved, repeated; medians are reported (the machine is shared, so
only the ratio between the two is meaningful). Peak memory is the growth of the peak resident set
size of a fresh child process over a few steps (above what the model, AdamW state and batch hold), one
child per configuration.

    python benchmarks/bench_train.py            # full run
    python benchmarks/bench_train.py --quick    # smoke test
Last line: ``fusion0_steps_per_s=<a> fusion2_steps_per_s=<b> fusion2_vs_fusion0=<b/a>``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import BertConfig, ViTConfig  # noqa: E402

from modeling_ccr import CCRConfig, CCRModel  # noqa: E402
from modeling_ccr.masking import mask_tokens  # noqa: E402

IMAGES, LANGUAGES, TEXT_LENGTH, VOCAB = 32, 6, 16, 4000


def build(num_fusion_layers: int) -> tuple[CCRModel, torch.optim.Optimizer, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    vision = ViTConfig(image_size=64, patch_size=8, hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                       intermediate_size=768)
    text = BertConfig(vocab_size=VOCAB, hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                      intermediate_size=768, max_position_embeddings=TEXT_LENGTH + 2)
    model = CCRModel(CCRConfig.from_vision_text_configs(vision, text, projection_dim=256,
                                                        num_fusion_layers=num_fusion_layers))
    model.train()
    texts = IMAGES * LANGUAGES
    input_ids = torch.randint(5, VOCAB, (texts, TEXT_LENGTH))
    input_ids[:, 0] = 2
    batch = {
        "pixel_values": torch.randn(IMAGES, 3, 64, 64),
        "input_ids": input_ids,
        "attention_mask": torch.ones(texts, TEXT_LENGTH, dtype=torch.long),
        "text_image_ids": torch.arange(IMAGES).repeat_interleave(LANGUAGES),
    }
    if num_fusion_layers:
        special = torch.zeros_like(input_ids, dtype=torch.bool)
        special[:, 0] = True
        batch["mlm_input_ids"], batch["mlm_labels"] = mask_tokens(input_ids, special, 4, VOCAB, 0.15)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4), batch


def step(model: CCRModel, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    start = time.perf_counter()
    loss = model(**batch, return_loss=True).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def peak_memory_child(num_fusion_layers: int, steps: int) -> None:
    """Peak resident memory of the training steps above what the built model and batch already hold."""
    model, optimizer, batch = build(num_fusion_layers)
    step(model, optimizer, batch)  # allocates AdamW's state, which belongs to the model's footprint
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset the peak (VmHWM) to the current resident size
        before = _status_kb("VmRSS")
        for _ in range(steps):
            step(model, optimizer, batch)
        peak_mb = (_status_kb("VmHWM") - before) / 1024
    except OSError:  # not Linux: fall back to the process's lifetime peak
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak_mb, "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few repeats, for a smoke test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        peak_memory_child(args.memory_child, 3)
        return
    repeats = 2 if args.quick else 8
    setups = {layers: build(layers) for layers in (0, 2)}
    for model, optimizer, batch in setups.values():
        step(model, optimizer, batch)  # warm-up
    times = {layers: [] for layers in setups}
    for _ in range(repeats):
        for layers, (model, optimizer, batch) in setups.items():
            times[layers].append(step(model, optimizer, batch))
    memory = {}
    for layers in setups:
        child = subprocess.run([sys.executable, __file__, "--memory-child", str(layers), "--threads", str(args.threads)],
                               capture_output=True, text=True, check=True)
        memory[layers] = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"batch: {IMAGES} images x {LANGUAGES} languages, 64 px ViT-4L-192 + BERT-4L-192, {args.threads} threads, "
          f"{repeats} interleaved repeats")
    print(f"{'fusion layers':>13} {'params (M)':>10} {'median step (s)':>16} {'steps/s':>8} {'peak extra RSS (MB)':>20}")
    rates = {}
    for layers in setups:
        median = statistics.median(times[layers])
        rates[layers] = 1.0 / median
        print(f"{layers:>13} {memory[layers]['parameters_m']:>10.2f} {median:>16.3f} {rates[layers]:>8.2f} "
              f"{memory[layers]['peak_mb']:>20.0f}")
    print(f"fusion0_steps_per_s={rates[0]:.3f} fusion2_steps_per_s={rates[2]:.3f} "
          f"fusion2_vs_fusion0={rates[2] / rates[0]:.3f}")


if __name__ == "__main__":
    main()
