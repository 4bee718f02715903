"""Do bfloat16 and float16 retrieve like float32? R@1 agreement per query on EmojiCCR's test split.

Loads the model three times with ``from_pretrained(..., dtype=...)`` (float32, bfloat16, float16), runs the
package's retrieval evaluation with each, and counts, over all queries (TR: each image in each language; IR:
each caption), how often the R@1 outcome (gold item ranked first or not) and the exact rank equal float32's.

    python hub_scripts/dtype_agreement.py outputs/emoji-ccr/model          # writes <model>/dtype_agreement.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from modeling_ccr.cli import check_model_source, run_cli  # noqa: E402
from modeling_ccr.emoji_dataset import load_emoji_ccr  # noqa: E402
from modeling_ccr.retrieval import evaluate_retrieval  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def query_ranks(model_dir: str, dtype: torch.dtype, dataset: Any, device: str) -> tuple[np.ndarray, dict]:
    """Ranks of every query (TR ranks of images with a caption in the language, then IR ranks) and metrics."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    metrics, ranks = evaluate_retrieval(model, processor, dataset, progress=True)
    tr = ranks.tr_ranks[~np.isnan(ranks.tr_ranks)]
    return np.concatenate([tr, ranks.ir_ranks.astype(np.float64)]), metrics


def agreement(model_dir: str, split: str = "test", device: str = "cpu") -> dict[str, Any]:
    dataset = load_emoji_ccr(split)
    ranks, recall = {}, {}
    for name, dtype in DTYPES.items():
        ranks[name], metrics = query_ranks(model_dir, dtype, dataset, device)
        recall[name] = {d: metrics["recall_avg"][d]["R@1"] for d in ("TR", "IR")}
    reference = ranks["float32"]
    out: dict[str, Any] = {"model": model_dir, "dataset": "emoji_ccr", "split": split, "queries": int(reference.size),
                           "recall_at_1_avg": recall}
    for name in ("bfloat16", "float16"):
        out[name] = {
            "r1_outcome_agreement_pct": 100.0 * float(np.mean((ranks[name] == 1) == (reference == 1))),
            "same_rank_pct": 100.0 * float(np.mean(ranks[name] == reference)),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a saved model folder or Hub repo id")
    parser.add_argument("--split", default="test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=None, help="default: <model>/dtype_agreement.json (./ for a repo id)")
    args = parser.parse_args(argv)
    check_model_source(args.model)
    load_emoji_ccr(args.split)  # an unknown split fails here, before the model is loaded
    result = agreement(args.model, args.split, args.device)
    print(json.dumps(result, indent=2))
    local = Path(args.model)
    output = Path(args.output) if args.output else (local if local.is_dir() else Path(".")) / "dtype_agreement.json"
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
