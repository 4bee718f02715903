"""Which precision a training run uses: bf16 mixed precision where the hardware multiplies bf16 natively, fp32
elsewhere (bf16 emulated in software is slower than fp32)."""

from __future__ import annotations

import torch


def bf16_support(device: str | torch.device | None = None) -> tuple[bool, str]:
    """``(supported, why)`` for bf16 mixed precision on ``device`` (default: CUDA when present, else the CPU)."""
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return supported, "the GPU " + ("supports" if supported else "does not support") + " bf16"
    if kind == "cpu":
        check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        native = bool(check and check()) or bool(amx and amx())
        return native, "the CPU " + ("has" if native else "lacks") + " native bf16 (AVX-512 BF16 / AMX)"
    return False, f"bf16 is not chosen automatically on {kind}"


def resolve_precision(precision: str, device: str | torch.device | None = None) -> tuple[bool, str]:
    """``precision`` is auto, bf16 or fp32; returns ``(use_bf16, a sentence for the log)``."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision != "auto":
        return precision == "bf16", f"precision: {precision} (asked for)"
    supported, why = bf16_support(device)
    return supported, f"precision: {'bf16 mixed' if supported else 'fp32'} (auto: {why})"


__all__ = ["bf16_support", "resolve_precision"]
