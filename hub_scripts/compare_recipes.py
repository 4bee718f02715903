#!/usr/bin/env python
"""What the fusion encoder, MITM, CMLM, ITM re-ranking and the authors' recipe buy, on EmojiCCR.

Same data and the same budget (``--num_train_epochs`` in all; the two-stage recipe splits it in half between its
stages). Each training run is ``hub_scripts/train.py`` in its own process; each fusion model is evaluated twice, by
embeddings only and with ITM re-ranking of the top ``--rerank_top_k`` (``hub_scripts/evaluate_model.py``).

- ``dual``: the main job, a dual encoder trained with 1-to-K ITC.
- ``full``: the same plus fusion layers, MITM and CMLM, with the package's defaults, one stage.
- ``ccrk``: the authors' recipe (``--recipe ccrk``): pre-training (1-to-K + MITM + CMLM), then fine-tuning
  (pairwise soft-label ITC + ITM) from it.
- ``ccrk_1stage`` (not run by default): the ``ccrk`` behaviours in the package's one-stage schedule.

    python hub_scripts/compare_recipes.py                       # 3 seeds x (dual, full, ccrk), 10 epochs
    python hub_scripts/compare_recipes.py --seeds 0 --num_train_epochs 2   # a quick look

Extra arguments after ``--`` go to every train.py run unchanged. The table (mean ± std over seeds) goes to ``<output>/comparison.md`` and ``comparison.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_objectives import COMPARISON_MODEL, summarise  # noqa: E402

from modeling_ccr.cli import run_cli  # noqa: E402
from modeling_ccr.results import RetrievalResults  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIGS = ("dual", "full", "ccrk", "ccrk_1stage")
QUIET = ["--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]
RESERVED = {"--seed", "--output_dir", "--num_train_epochs", "--rerank_top_k", "--num_fusion_layers", "--recipe", "--stage",
            "--init_from"}


def _call(command: list[str], what: str) -> None:
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RuntimeError(f"{what} failed (exit {completed.returncode}): {last}")


def train(folder: Path, seed: int, epochs: float, options: list[str]) -> Path:
    """One train.py run (skipped when its model folder exists); returns the model folder."""
    model = folder / "model"
    if not (model / "eval_results.json").exists():
        command = [sys.executable, str(HERE / "train.py"), "--seed", str(seed), "--output_dir", str(folder),
                   "--num_train_epochs", str(epochs), "--rerank_top_k", "0", *QUIET, *COMPARISON_MODEL, *options]
        _call(command, f"training {folder.name}")
    return model


def evaluate(model: Path, rerank_top_k: int) -> RetrievalResults:
    """The model folder evaluated on the test split, re-ranked or not (cached in ``<model>/eval-k<k>``)."""
    out = model / f"eval-k{rerank_top_k}"
    if not (out / "eval_results.json").exists():
        _call([sys.executable, str(HERE / "evaluate_model.py"), str(model), "--rerank-top-k", str(rerank_top_k),
               "--output-dir", str(out), "--no-progress", "--device", "cpu"], f"evaluating {model}")
    return RetrievalResults.from_json(out / "eval_results.json")


def run(config: str, seed: int, output: Path, epochs: float, fusion_layers: int, top_k: int,
        extra: list[str] = ()) -> dict[str, RetrievalResults]:
    """Rows of the table from one configuration and seed (``extra``: train.py options for every run)."""
    base = output / f"{config}-seed{seed}"
    fusion = ["--num_fusion_layers", str(fusion_layers), *extra]
    if config == "dual":
        return {"dual encoder (main job)": evaluate(train(base, seed, epochs, list(extra)), 0)}
    if config == "full":
        model = train(base, seed, epochs, fusion)
        name = "fusion + MITM + CMLM, package defaults"
    elif config == "ccrk_1stage":
        model = train(base, seed, epochs, [*fusion, "--recipe", "ccrk"])
        name = "ccrk behaviours, one stage"
    else:
        pre = train(output / f"ccrk-pre-seed{seed}", seed, epochs / 2, [*fusion, "--recipe", "ccrk", "--stage", "pretrain"])
        model = train(base, seed, epochs / 2, ["--recipe", "ccrk", "--stage", "finetune", "--init_from", str(pre),
                                               *extra])
        name = "ccrk recipe (pretrain + finetune)"
    return {name: evaluate(model, 0), f"{name}, re-ranked top {top_k}": evaluate(model, top_k)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("outputs/compare_recipes"), help="folder for all runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=["dual", "full", "ccrk"], choices=CONFIGS)
    parser.add_argument("--num_train_epochs", type=float, default=10.0, help="the same budget for every model")
    parser.add_argument("--num_fusion_layers", type=int, default=2)
    parser.add_argument("--rerank_top_k", type=int, default=16)
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then options passed to every train.py run")
    args = parser.parse_args(argv)
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    if not args.num_train_epochs > 0:
        parser.error(f"--num_train_epochs must be > 0, got {args.num_train_epochs}")
    if args.rerank_top_k < 1 or args.num_fusion_layers < 1:
        parser.error("--rerank_top_k and --num_fusion_layers must be >= 1 (the fusion rows are re-ranked by ITM)")
    if reserved := RESERVED & {a.split("=")[0] for a in extra}:
        parser.error(f"{', '.join(sorted(reserved))} are set per run by this script; do not pass them to train.py")
    results: dict[str, list[RetrievalResults]] = {}
    jobs = [(config, seed) for seed in args.seeds for config in args.configs]
    for config, seed in tqdm(jobs, desc="runs"):
        rows = run(config, seed, args.output, args.num_train_epochs, args.num_fusion_layers, args.rerank_top_k, extra)
        for name, result in rows.items():
            results.setdefault(name, []).append(result)
        # Written after every run: a stopped comparison keeps what it has; each row says over how many seeds.
        table, summary = summarise({f"{name} ({len(runs)} seed{'s' * (len(runs) > 1)})": runs
                                    for name, runs in results.items()})
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "comparison.md").write_text(table)
        (args.output / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    sys.exit(run_cli(main))
