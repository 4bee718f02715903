#!/usr/bin/env python
"""The paper's comparison on EmojiCCR: 1-to-K against the one_to_one, per_language and pivot baselines.

Same model, same data, same budget; only ``--loss_type`` changes. Each (objective, seed) run is
``hub_scripts/train.py`` in its own process; the table (mean ± std over seeds) goes to
``<output>/comparison.md`` and ``<output>/comparison.json``.

    python hub_scripts/compare_objectives.py                      # every objective x 3 seeds
    python hub_scripts/compare_objectives.py --seeds 0 --num_train_epochs 2   # a quick look
Extra arguments after ``--`` go to train.py unchanged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_ccr.cli import run_cli  # noqa: E402
from modeling_ccr.objectives import LOSS_TYPES as OBJECTIVES  # noqa: E402
from modeling_ccr.results import RetrievalResults, render_table  # noqa: E402

TRAIN = Path(__file__).resolve().with_name("train.py")


def run(objective: str, seed: int, output: Path, epochs: float, extra: list[str]) -> RetrievalResults:
    folder = output / f"{objective}-seed{seed}"
    results = folder / "model" / "eval_results.json"
    if not results.exists():
        command = [
            sys.executable, str(TRAIN), "--loss_type", objective, "--seed", str(seed), "--output_dir", str(folder),
            "--num_train_epochs", str(epochs), "--eval_strategy", "no", "--save_strategy", "no",
            "--report_to", "none", "--disable_tqdm", "true", *extra,
        ]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            last = (completed.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise RuntimeError(f"run {objective} seed {seed} failed (exit {completed.returncode}): {last}")
    return RetrievalResults.from_json(results)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def summarise(results: dict[str, list[RetrievalResults]]) -> tuple[str, dict]:
    first = next(iter(results.values()))[0]
    summary: dict[str, dict[str, tuple[float, float]]] = {}
    for objective, runs in results.items():
        row = {}
        for direction in ("TR", "IR"):
            for language in first.languages:
                row[f"{direction} R@1 {language}"] = mean_std([r.recall[direction][language]["R@1"] for r in runs])
        row["mean recall"] = mean_std([r.mean_recall for r in runs])
        row["MRV_TR"] = mean_std([r.mrv["TR"] for r in runs])
        row["MRV_IR"] = mean_std([r.mrv["IR"] for r in runs])
        summary[objective] = row
    columns = list(next(iter(summary.values())))
    rows = [[objective] + [f"{m:.1f} ± {s:.1f}" for m, s in row.values()] for objective, row in summary.items()]
    lines = [render_table(["objective", *columns], rows, markdown=True)]
    if first.chance:
        chance = first.chance
        lines.append(
            "\nChance level: R@1 TR "
            + f"{chance['TR']['R@1']:.2f}%, IR {chance['IR']['R@1']:.2f}%; mean recall by chance "
            + f"{statistics.mean(v for d in chance.values() for v in d.values()):.2f}%."
        )
    runs = len(next(iter(results.values())))
    lines.append(f"\nRecall in %, mean ± std over {runs} seed(s); MRV lower is better (0 = every language ranks "
                 "each instance identically).")
    return "\n".join(lines) + "\n", {k: {c: list(v) for c, v in row.items()} for k, row in summary.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("outputs/compare"), help="folder for all runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--num_train_epochs", type=float, default=15.0, help="the same budget for every run")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then options passed to train.py")
    args = parser.parse_args(argv)
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    if not args.num_train_epochs > 0:
        parser.error(f"--num_train_epochs must be > 0, got {args.num_train_epochs}")
    reserved = {"--loss_type", "--seed", "--output_dir", "--num_train_epochs"} & {a.split("=")[0] for a in extra}
    if reserved:
        parser.error(f"{', '.join(sorted(reserved))} are set per run by this script; do not pass them to train.py")
    results: dict[str, list[RetrievalResults]] = {objective: [] for objective in args.objectives}
    jobs = [(objective, seed) for seed in args.seeds for objective in args.objectives]
    for objective, seed in tqdm(jobs, desc="runs"):
        results[objective].append(run(objective, seed, args.output, args.num_train_epochs, extra))
    table, summary = summarise(results)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "comparison.md").write_text(table)
    (args.output / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    sys.exit(run_cli(main))
