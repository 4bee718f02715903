"""Smoke tests of benchmarks/ (quick mode): each script runs and reports its figures. No timing is asserted.

Marked ``bench``: ``pytest -m "not bench"`` runs the unit tests alone, ``pytest -m bench`` these.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.bench


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_model_quick_mode_reports_both_ratios(capsys):
    bench = _load("bench_model")
    threads = torch.get_num_threads()
    try:
        result = bench.main(["--quick", "--repeats", "1"])
    finally:
        torch.set_num_threads(threads)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"loss_ratio={result['loss_ratio']:.3f} train_step_ratio={result['train_step_ratio']:.3f} "
                    f"bf16_train_step_ratio={result['bf16_train_step_ratio']:.3f}")
    assert result["loss_ratio"] > 0 and result["train_step_ratio"] > 0 and result["bf16_train_step_ratio"] > 0


def test_bench_speed_quick_mode_reports_every_ratio(capsys):
    bench = _load("bench_speed")
    threads = torch.get_num_threads()
    try:
        result = bench.main(["--quick", "--repeats", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == " ".join(f"{key}={value:.3f}" for key, value in result.items())
    assert all(value >= 0 for value in result.values()) and result["bf16_step"] > 0 and result["bf16_encode"] > 0
    assert 0 <= result["r1_rank_agreement"] <= 100 and result["length_groups_step"] > 0


def test_bench_train_quick_run_reports_steps_per_second_and_memory_for_both_sizes():
    completed = subprocess.run([sys.executable, str(BENCHMARKS / "bench_train.py"), "--quick", "--threads", "1"],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    match = re.fullmatch(r"fusion0_steps_per_s=([\d.]+) fusion2_steps_per_s=([\d.]+) fusion2_vs_fusion0=([\d.]+)",
                         lines[-1])
    assert match, lines[-1]
    assert all(float(value) > 0 for value in match.groups())
    table = [line.split() for line in lines if line.strip()[:1] in {"0", "2"}]
    assert [row[0] for row in table] == ["0", "2"]
    assert float(table[1][1]) > float(table[0][1])  # the fusion layers add parameters


@pytest.mark.parametrize("script", ["bench_model", "bench_speed"])
def test_device_and_size_mistakes_are_one_line_errors(script, capsys):
    """--device cuda where torch sees no GPU, and --quick with a larger --size, stop before any work (exit 2)."""
    bench = _load(script)
    mistakes = [(["--quick", "--size", "base"], "--quick runs the tiny sizes")]
    if not torch.cuda.is_available():
        mistakes.append((["--device", "cuda"], "--device cuda: torch sees no CUDA device"))
    for argv, message in mistakes:
        with pytest.raises(SystemExit) as exit_info:
            bench.main(argv)
        assert exit_info.value.code == 2
        captured = capsys.readouterr()
        assert message in captured.err and captured.out == ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("script", ["bench_model", "bench_speed"])
def test_quick_mode_runs_on_a_gpu(script, capsys):
    bench = _load(script)
    result = bench.main(["--quick", "--repeats", "1", "--threads", "1", "--device", "cuda"])
    assert all(value >= 0 for value in result.values())
    assert result["bf16_train_step_ratio" if script == "bench_model" else "bf16_step"] > 0
