"""Evaluate a CCR model on cross-lingual retrieval: Recall@1/5/10 per language (TR and IR) and MRV.

Loads the model the way a user does (``AutoModel`` / ``AutoProcessor`` with ``trust_remote_code``), encodes
the dataset with progress bars, prints a table and writes ``eval_results.json`` and ``eval_report.png``.

    python hub_scripts/evaluate_model.py outputs/ccr-emoji                      # the embedded EmojiCCR test split
    python hub_scripts/evaluate_model.py MODEL_DIR --dataset path/to/xFlickrCO --image-root path/to/images
    python hub_scripts/evaluate_model.py MODEL_DIR --dataset data/task1 --split test_2016_flickr --languages en de
    python hub_scripts/evaluate_model.py MODEL_DIR --rerank-top-k 16                # ITM re-ranking (fusion models)
    python hub_scripts/evaluate_model.py MODEL_DIR --dtype bf16 --restyle         # bf16 encoding; images in another style

``--dataset`` is ``emoji`` (default) or any path ``modeling_ccr.loaders.load_ccr_dataset`` understands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from modeling_ccr.cli import check_model_source, check_positive, run_cli  # noqa: E402
from modeling_ccr.dataset_schema import dataset_languages, select_languages  # noqa: E402
from modeling_ccr.results import RetrievalResults  # noqa: E402
from modeling_ccr.results import dataset_name as results_dataset_name  # noqa: E402
from modeling_ccr.retrieval import evaluate_retrieval  # noqa: E402
from modeling_ccr.retrieval_report import save_report_plot  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a saved model folder or Hub repo id (loaded with trust_remote_code=True)")
    parser.add_argument("--dataset", default="emoji", help="'emoji' (embedded EmojiCCR) or a dataset path")
    parser.add_argument("--split", default="test")
    parser.add_argument("--image-root", default=None, help="folder with the image files (IGLUE, Multi30K, COCO)")
    parser.add_argument("--languages", nargs="+", default=None, help="languages to evaluate (default: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rerank-top-k", type=int, default=0, help="stage 2: ITM re-ranking of each query's top-k")
    parser.add_argument("--mrv-variant", choices=("variance", "std"), default="variance")
    parser.add_argument("--output-dir", default=None, help="default: <model_dir>/eval (or ./eval for a Hub id)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--restyle", action="store_true",
                        help="evaluate on the images drawn in another style (modeling_ccr.augmentation.restyle)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="encode in bf16 (autocast; similarities and ranks stay fp32): faster where bf16 is native")
    return parser.parse_args(argv)


def load_model(model_dir: str, device: str) -> tuple[Any, Any]:
    """What a user types: AutoModel / AutoProcessor with trust_remote_code."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).to(device)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    return model, processor


def encoding_precision(dtype: str, device: str):
    """bf16 autocast around the encoding for ``--dtype bf16`` (the weights stay fp32), nothing for fp32."""
    import contextlib

    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def load_dataset_arg(dataset: str, split: str, image_root: str | None, languages: list[str] | None):
    """The split to evaluate. A dataset without splits (one CSV / JSONL / COCO json / image folder) gives the
    same seeded held-out part train.py tested on (``--split test``), or ``--split all`` for the whole file."""
    if dataset == "emoji":
        from modeling_ccr.emoji_dataset import load_emoji_ccr

        return load_emoji_ccr(split)
    from modeling_ccr.loaders import load_ccr_split

    loaded, note = load_ccr_split(dataset, split, image_root=image_root, languages=languages)
    if note:
        print(note)
    return loaded


def run_evaluation(
    model: Any,
    processor: Any,
    dataset: Any,
    output_dir: str | Path,
    *,
    dataset_name: str,
    split: str,
    model_name: str,
    batch_size: int = 64,
    languages: list[str] | None = None,
    rerank_top_k: int = 0,
    mrv_variant: str = "variance",
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate, print the table, write eval_results.json and eval_report.png; return the results dict."""
    metrics, ranks = evaluate_retrieval(
        model, processor, dataset, batch_size=batch_size, languages=languages,
        rerank_top_k=rerank_top_k, progress=progress, mrv_variant=mrv_variant,
    )
    results = RetrievalResults.from_json(metrics)
    results.dataset, results.split, results.model, results.rerank_top_k = dataset_name, split, model_name, rerank_top_k
    results.extra.update(extra or {})
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = results.save(output_dir / "eval_results.json")
    png_path = save_report_plot(metrics, ranks, output_dir / "eval_report.png", title=f"{model_name} on {dataset_name} ({split})")
    print(f"\n{model_name} on {dataset_name} ({split})" + (f", ITM re-ranking of the top {rerank_top_k}" if rerank_top_k else ""))
    print(results.summary_text())
    print(f"\nwrote {json_path} and {png_path}")
    return results.to_json()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_positive(batch_size=args.batch_size)
    if args.rerank_top_k < 0:
        raise ValueError(f"--rerank-top-k must be >= 0, got {args.rerank_top_k}")
    check_model_source(args.model_dir)
    # The data first: a bad dataset argument fails before the model is loaded.
    dataset = load_dataset_arg(args.dataset, args.split, args.image_root, args.languages)
    select_languages(dataset_languages(dataset), args.languages, f"{args.dataset} ({args.split})")
    model, processor = load_model(args.model_dir, args.device)
    if args.restyle:
        from modeling_ccr.augmentation import RestyledProcessor

        processor = RestyledProcessor(processor)
    local = Path(args.model_dir)
    output_dir = args.output_dir or (local / "eval" if local.is_dir() else Path("eval"))
    held_out = None
    if args.dataset != "emoji":
        from modeling_ccr.loaders import held_out_record

        held_out = held_out_record(args.dataset, {args.split: len(dataset)})
    with encoding_precision(args.dtype, args.device):
        run_evaluation(
            model, processor, dataset, output_dir,
            dataset_name=results_dataset_name(args.dataset), split=args.split, model_name=args.model_dir,
            batch_size=args.batch_size, languages=args.languages, rerank_top_k=args.rerank_top_k,
            mrv_variant=args.mrv_variant, progress=not args.no_progress,
            extra={"held_out_split": held_out} if held_out else None,
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
