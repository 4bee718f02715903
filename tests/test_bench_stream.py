"""benchmarks/bench_stream.py runs and reports memory and throughput for every corpus size (no timing is asserted)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_stream.py"


@pytest.mark.slow
def test_quick_run_reports_rss_and_throughput_ratios():
    completed = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1"], capture_output=True,
                               text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    match = re.fullmatch(r"rss_ratio_1m_vs_10k=([\d.]+) throughput_vs_in_memory=([\d.]+)", lines[-1])
    assert match, lines[-1]
    assert all(float(value) > 0 for value in match.groups())
    rows = [line.split() for line in lines if line.startswith(("stream ", "memory "))]
    assert [(row[0], row[1]) for row in rows] == [("stream", "1,000"), ("stream", "2,000"), ("stream", "4,000"),
                                                  ("memory", "1,000"), ("memory", "2,000")]
