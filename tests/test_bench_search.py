"""benchmarks/bench_search.py runs and reports every index (no timing is asserted)."""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_search.py"


def test_quick_run_reports_build_latency_and_recall_for_each_index():
    completed = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--queries", "100"], capture_output=True,
                               text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    match = re.fullmatch(r"ann_recall_at_10=([\d.]+) ann_speedup_vs_flat=([\d.]+)", lines[-1])
    assert match, lines[-1]
    assert 0 < float(match.group(1)) <= 1 and float(match.group(2)) > 0
    rows = [line.split() for line in lines if line.startswith("clustered")]
    assert [re.sub(r"\d+", "", row[2].split(",")[0]) for row in rows] == ["Flat", "IVF", "HNSW"]
    assert all(float(row[-2]) == 1.0 for row in rows if row[2] == "Flat")  # flat is its own reference
