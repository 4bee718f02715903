#!/usr/bin/env python
"""The paper's comparison on EmojiCCR: 1-to-K against the one_to_one, per_language and pivot baselines.

Same model, same data, same budget; only ``--loss_type`` changes. Each (objective, seed) run is
``hub_scripts/train.py`` in its own process; the table (mean ± std over seeds) goes to
``<output>/comparison.md`` and ``<output>/comparison.json``, one table per training language coverage:
per-language R@1, mean recall, MRV, and the mixed-language pool (all captions of all languages at once:
R@1, MRV_TR_mixed, the largest excess of one language's top-10 share over its pool share, the spread over
languages of the mean non-matching similarity).

    python hub_scripts/compare_objectives.py                      # every objective x 3 seeds, full coverage
    python hub_scripts/compare_objectives.py --coverages full partial --divide_by_k   # + partial, + 5th row
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
from modeling_ccr.dataset_schema import LANGUAGE_COVERAGES  # noqa: E402
from modeling_ccr.objectives import LOSS_TYPES as OBJECTIVES  # noqa: E402
from modeling_ccr.objectives import check_objective  # noqa: E402
from modeling_ccr.results import RetrievalResults, render_table  # noqa: E402

TRAIN = Path(__file__).resolve().with_name("train.py")


# The model every comparison trains: the main job's model when the published tables were measured (ViT tower,
# 16-token captions, no augmentation, learning rate 5e-4, 5 % warm-up), fixed so that they reproduce; options
# after ``--`` come later and win.
COMPARISON_MODEL = ["--vision_model", "tiny-vit", "--max_text_length", "16", "--no_image_augmentation",
                    "--learning_rate", "5e-4", "--warmup_steps", "0.05"]

DIVIDE_BY_K = "one_to_k ÷K"  # 1-to-K with the authors' released normalisation (itc_divide_by_k)


RESULTS = Path("model") / "eval_results.json"


def run_folder(objective: str, seed: int, output: Path, coverage: str = "full") -> Path:
    """Where one (objective, seed, coverage) run writes (full coverage keeps the folder names it always had)."""
    name = "one_to_k_divide_by_k" if objective == DIVIDE_BY_K else objective
    return output / (f"{name}-seed{seed}" if coverage == "full" else f"{name}-{coverage}-seed{seed}")


def run(objective: str, seed: int, output: Path, epochs: float, extra: list[str], coverage: str = "full") -> RetrievalResults:
    folder = run_folder(objective, seed, output, coverage)
    results = folder / RESULTS
    if not results.exists():
        loss = ["--loss_type", "one_to_k", "--itc_divide_by_k", "true"] if objective == DIVIDE_BY_K else ["--loss_type", objective]
        command = [
            sys.executable, str(TRAIN), *loss, "--seed", str(seed), "--output_dir", str(folder),
            "--num_train_epochs", str(epochs), "--eval_strategy", "no", "--save_strategy", "no",
            "--report_to", "none", "--disable_tqdm", "true", "--language_coverage", coverage, *COMPARISON_MODEL, *extra,
        ]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            last = (completed.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise RuntimeError(f"run {objective} seed {seed} failed (exit {completed.returncode}): {last}")
    return RetrievalResults.from_json(results)


def _undefined_reason(objective: str, coverage: str) -> str | None:
    """Why ``objective`` cannot train at ``coverage`` (train.py's own check), None when it can."""
    try:
        check_objective(objective, coverage=coverage)
    except ValueError as error:
        return str(error)
    return None


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
        if all(r.mixed for r in runs):
            row["mixed R@1"] = mean_std([r.mixed["recall"]["R@1"] for r in runs])
            row["MRV_TR_mixed"] = mean_std([r.mixed["mrv_tr"] for r in runs])
            row["top-10 max excess (pts)"] = mean_std([r.mixed["language_share"]["max_excess"] for r in runs])
            row["offset spread ×100"] = mean_std([100 * r.mixed["offset"]["spread_non_matching"] for r in runs])
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
    counts = {objective: len(runs) for objective, runs in results.items()}
    runs = next(iter(counts.values())) if len(set(counts.values())) == 1 else (
        "the number of seeds per row (" + ", ".join(f"{o} {n}" for o, n in counts.items()) + ")")
    lines.append(f"\nRecall in %, mean ± std over {runs} seed(s); MRV lower is better (0 = every language ranks "
                 "each instance identically). Mixed pool: all captions of all languages at once; max excess = the "
                 "largest (share of one language in all top-10 results − its share of the pool), in points; offset "
                 "spread = max − min over languages of the mean non-matching cosine similarity, ×100.")
    return "\n".join(lines) + "\n", {k: {c: list(v) for c, v in row.items()} for k, row in summary.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("outputs/compare"), help="folder for all runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--objectives", nargs="*", default=list(OBJECTIVES), choices=OBJECTIVES,
                        help="objectives to compare (none: only the --divide_by_k row)")
    parser.add_argument("--num_train_epochs", type=float, default=15.0, help="the same budget for every run")
    parser.add_argument("--coverages", nargs="+", default=["full"], choices=LANGUAGE_COVERAGES,
                        help="training language coverage(s) (train.py --language_coverage); one table each")
    parser.add_argument("--divide_by_k", action="store_true",
                        help="a fifth row: one_to_k with the authors' released normalisation (itc_divide_by_k)")
    parser.add_argument("--table_only", action="store_true",
                        help="train nothing: the tables from the runs already in --output (the seeds each row has)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then options passed to train.py")
    args = parser.parse_args(argv)
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    if not args.num_train_epochs > 0:
        parser.error(f"--num_train_epochs must be > 0, got {args.num_train_epochs}")
    reserved = {"--loss_type", "--seed", "--output_dir", "--num_train_epochs"} & {a.split("=")[0] for a in extra}
    if reserved:
        parser.error(f"{', '.join(sorted(reserved))} are set per run by this script; do not pass them to train.py")
    rows = list(args.objectives) + ([DIVIDE_BY_K] if args.divide_by_k else [])
    results = {coverage: {objective: [] for objective in rows} for coverage in args.coverages}
    # (coverage, objective) -> why it cannot train there (pivot without English for some images): no row
    undefined = {(coverage, objective): reason for coverage in args.coverages for objective in args.objectives
                 if (reason := _undefined_reason(objective, coverage)) is not None}
    jobs = [(coverage, objective, seed) for seed in args.seeds for coverage in args.coverages for objective in rows
            if (coverage, objective) not in undefined]
    for coverage, objective, seed in tqdm(jobs, desc="runs"):
        if args.table_only and not run_folder(objective, seed, args.output, coverage).joinpath(RESULTS).exists():
            continue
        results[coverage][objective].append(run(objective, seed, args.output, args.num_train_epochs, extra, coverage))
    tables, summaries = [], {}
    for coverage, per_objective in results.items():
        per_objective = {objective: runs for objective, runs in per_objective.items() if runs}
        if not per_objective:
            continue
        table, summaries[coverage] = summarise(per_objective)
        for (cov, objective), reason in sorted(undefined.items()):
            if cov == coverage:
                table += f"\n`{objective}` has no row here: {reason}.\n"
        tables.append(f"### Training language coverage: {coverage}\n\n{table}")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "comparison.md").write_text("\n".join(tables))
    (args.output / "comparison.json").write_text(json.dumps(summaries, indent=2, ensure_ascii=False) + "\n")
    print("\n".join(tables))


if __name__ == "__main__":
    sys.exit(run_cli(main))
