"""Every command's bad arguments, table-driven: each row runs the command in a subprocess and expects its exit
status (2: the input is wrong, as argparse's usage errors), one line ``<command>: error: ...`` naming the problem,
no traceback, and nothing written or removed in the work folder. Argument errors fail before a model is built,
so a row costs one interpreter start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _push_helpers import write_plain_model_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A work folder with the inputs the rows refer to (all names relative to it)."""
    work = tmp_path_factory.mktemp("work")
    model = write_plain_model_folder(work / "model")
    (work / "not_a_model").mkdir()
    (work / "file.txt").write_text("not a model\n")
    (work / "index").mkdir()
    held = work / "held"  # a folder holding another run
    (held / "model").mkdir(parents=True)
    (held / "model" / "config.json").write_text("{}")
    (held / "run.json").write_text(json.dumps({"run_id": "0123456789abcdef", "arguments": {"training.seed": 1}}))
    (held / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (held / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    staging = work / ".model-x1y2"
    staging.mkdir()
    for name in os.listdir(model):
        if (model / name).is_file():
            (staging / name).write_bytes((model / name).read_bytes())
    for bad in ("empty", "truncated", "mismatched", "linked"):
        folder = work / bad
        folder.mkdir()
        for name in os.listdir(model):
            if (model / name).is_file():
                (folder / name).write_bytes((model / name).read_bytes())
    (work / "empty" / "model.safetensors").write_bytes(b"")
    weights = (model / "model.safetensors").read_bytes()
    (work / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    config = json.loads((model / "config.json").read_text())
    config["projection_dim"] = 12
    (work / "mismatched" / "config.json").write_text(json.dumps(config))
    (work / "secret.txt").write_text("hf_secret_token\n")
    (work / "linked" / "notes.txt").symlink_to(work / "secret.txt")
    return work


T, E, P, B, S = "train.py", "evaluate_model.py", "push.py", "build_index.py", "search.py"
D, Z, A, C = "demo.py", "zero_shot_eval.py", "dtype_agreement.py", "compare_objectives.py"
RUN = ["--output_dir", "out"]
ROWS = [
    # (command, arguments, exit status, words the one-line message must hold)
    (T, ["--num_train_epochs", "0", *RUN], 2, "--num_train_epochs must be a number > 0"),
    (T, ["--num_train_epochs", "-3", *RUN], 2, "--num_train_epochs must be a number > 0"),
    (T, ["--num_train_epochs", "nan", *RUN], 2, "--num_train_epochs must be a number > 0"),
    (T, ["--per_device_train_batch_size", "0", *RUN], 2, "--per_device_train_batch_size must be >= 1"),
    (T, ["--gradient_accumulation_steps", "0", *RUN], 2, "--gradient_accumulation_steps must be >= 1"),
    (T, ["--max_steps", "-5", *RUN], 2, "--max_steps must be > 0"),
    (T, ["--max_steps", "ten", *RUN], 2, "invalid int value: 'ten'"),
    (T, ["--learning_rate", "0", *RUN], 2, "--learning_rate must be a number > 0"),
    (T, ["--max_train_samples", "0", *RUN], 2, "--max_train_samples must be >= 1"),
    (T, ["--image_size", "-1", *RUN], 2, "--image_size must be >= 1"),
    (T, ["--rerank_top_k", "-1", *RUN], 2, "--rerank_top_k must be >= 0"),
    (T, ["--languages", " , ", *RUN], 2, "--languages must name at least one language"),
    (T, ["--languages", "en,xx", *RUN], 2, "unknown language(s) ['xx']"),
    (T, ["--dataset", "no/such/data", *RUN], 2, "no/such/data does not exist"),
    (T, ["--resume_from_checkpoint", "no/such/checkpoint-5", *RUN], 2, "no/such/checkpoint-5 does not exist"),
    (T, ["--resume_from_checkpoint", "last", *RUN], 2, "no complete checkpoint in out/checkpoints"),
    (T, ["--resume_from_checkpoint", "last", "--overwrite_output_dir", *RUN], 2, "contradict each other"),
    (T, ["--output_dir", "held"], 2, "already holds a run (model, checkpoints)"),
    (T, ["--output_dir", "held", "--resume_from_checkpoint", "last"], 2, "holds a run with other arguments"),
    (T, ["--output_dir", "file.txt"], 2, "file.txt is a file"),
    (T, ["--config_overrides", "itm_head=mlp", *RUN], 2, "itm_head=mlp: key itm_head isn't in the original config"),
    (T, ["--config_overrides", "itm_head_type=cnn", *RUN], 2, "itm_head_type must be one of ('linear', 'mlp')"),
    (T, ["--config_overrides", "itc_divide_by_k=true", *RUN], 2, "itc_divide_by_k is a training option"),
    (E, ["model", "--batch-size", "0"], 2, "--batch-size must be > 0"),
    (E, ["model", "--rerank-top-k", "-2"], 2, "--rerank-top-k must be >= 0"),
    (E, ["./no/such/model"], 2, "model folder ./no/such/model does not exist"),
    (E, ["file.txt"], 2, "model file.txt is a file"),
    (E, ["not_a_model"], 2, "not_a_model has no config.json"),
    (E, ["model", "--split", "bogus"], 2, "unknown EmojiCCR split 'bogus'"),
    (E, ["model", "--languages", "en", "xx"], 2, "unknown language(s) ['xx'] for emoji (test)"),
    (P, ["model", "--repo-id", "no-namespace"], 2, "invalid repo id 'no-namespace'"),
    (P, [".model-x1y2", "--repo-id", "ns/m"], 2, "is a temporary folder"),
    (P, ["empty", "--repo-id", "ns/m"], 2, "model.safetensors: empty (0 bytes)"),
    (P, ["truncated", "--repo-id", "ns/m"], 2, "model.safetensors: not a readable safetensors file"),
    (P, ["mismatched", "--repo-id", "ns/m"], 2, "does not match config.json"),
    (P, ["linked", "--repo-id", "ns/m", "--dry-run"], 2, "symlink(s) leaving the folder"),
    (P, ["--repo-id", "ns/m"], 2, "give either MODEL_DIR or --metric"),
    (B, ["model", "--out", "index"], 2, "index already exists"),
    (B, ["model", "--out", "new-index", "--batch-size", "0"], 2, "--batch-size must be > 0"),
    (S, ["no-index", "red apple"], 2, "index folder no-index does not exist"),
    (S, ["index", "red apple", "--k", "0"], 2, "--k must be > 0"),
    (D, ["--port", "0"], 2, "--port must be in 1..65535"),
    (Z, ["model", "--languages", "xx"], 2, "unknown language(s) ['xx']"),
    (A, ["model", "--split", "bogus"], 2, "unknown EmojiCCR split 'bogus'"),
    (C, ["--num_train_epochs", "0"], 2, "--num_train_epochs must be > 0"),
    (C, ["--", "--seed", "3"], 2, "--seed are set per run by this script"),
]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize(("command", "args", "status", "message"), ROWS,
                         ids=[f"{c}:{' '.join(a)}" for c, a, _, _ in ROWS])
def test_bad_arguments_end_with_one_line_and_write_nothing(work, tmp_path, command, args, status, message):
    before = _snapshot(work)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_unused",
           "HF_ENDPOINT": "http://127.0.0.1:9", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("CCR_DEBUG", None)
    done = subprocess.run([sys.executable, str(ROOT / "hub_scripts" / command), *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith(f"{command}: error:")]
    assert done.returncode == status, done.stderr[-2000:]
    assert len(errors) == 1 and message in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert _snapshot(work) == before  # nothing written, nothing removed


def test_debug_flag_shows_the_traceback(work):
    done = subprocess.run([sys.executable, str(ROOT / "hub_scripts" / S), "no-index", "q", "--debug"], cwd=work,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" in done.stderr and "no-index does not exist" in done.stderr
