"""hub_scripts/compare_recipes.py: the recipes table from real (tiny) runs, and its argument errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "hub_scripts" / "compare_recipes.py"
TINY = ["--max_train_samples", "16", "--max_steps", "2", "--per_device_train_batch_size", "8", "--max_eval_samples",
        "16", "--test_split", "validation"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_every_configuration_trains_evaluates_and_fills_the_table(tmp_path):
    """dual, full and the two-stage ccrk recipe on 16 images, two steps each: five rows, the fusion models evaluated
    with and without ITM re-ranking, and each run's saved results say what ran."""
    out = tmp_path / "recipes"
    completed = _run("--output", str(out), "--seeds", "0", "--num_fusion_layers", "1", "--rerank_top_k", "4", "--",
                     *TINY)
    assert completed.returncode == 0, completed.stderr[-3000:]
    table = (out / "comparison.md").read_text()
    for row in ("dual encoder (main job) (1 seed)", "fusion + MITM + CMLM, package defaults (1 seed)",
                "fusion + MITM + CMLM, package defaults, re-ranked top 4 (1 seed)",
                "ccrk recipe (pretrain + finetune) (1 seed)", "ccrk recipe (pretrain + finetune), re-ranked top 4 (1 seed)"):
        assert f"| {row} |" in table, row
    assert set(json.loads((out / "comparison.json").read_text())) == {
        line.split("|")[1].strip() for line in table.splitlines()[2:] if line.startswith("| ")}
    finetune = json.loads((out / "ccrk-seed0" / "model" / "config.json").read_text())
    assert finetune["num_fusion_layers"] == 1
    for model, top_k in (("full-seed0", 4), ("ccrk-seed0", 4), ("dual-seed0", 0)):
        saved = json.loads((out / model / "model" / f"eval-k{top_k}" / "eval_results.json").read_text())
        assert saved["rerank_top_k"] == top_k
    fine = json.loads((out / "ccrk-seed0" / "model" / "eval_results.json").read_text())
    assert (fine["recipe"], fine["stage"], fine["loss_type"]) == ("ccrk", "finetune", "pairwise_soft")


@pytest.mark.parametrize("args,message", [
    (["--num_train_epochs", "0"], "--num_train_epochs must be > 0"),
    (["--rerank_top_k", "0"], "--rerank_top_k and --num_fusion_layers must be >= 1"),
    (["--", "--seed", "3"], "--seed are set per run by this script"),
    (["--configs", "bogus"], "invalid choice: 'bogus'"),
])
def test_bad_arguments_are_one_line_before_any_run(tmp_path, args, message):
    completed = _run("--output", str(tmp_path / "out"), *args)
    assert completed.returncode == 2 and message in completed.stderr and "Traceback" not in completed.stderr
    assert not (tmp_path / "out").exists()
