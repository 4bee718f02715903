"""benchmarks/bench_train.py runs and reports both configurations (no timing is asserted)."""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"


def test_quick_run_reports_steps_per_second_and_memory_for_both_sizes():
    completed = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1"], capture_output=True,
                               text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    match = re.fullmatch(r"fusion0_steps_per_s=([\d.]+) fusion2_steps_per_s=([\d.]+) fusion2_vs_fusion0=([\d.]+)",
                         lines[-1])
    assert match, lines[-1]
    assert all(float(value) > 0 for value in match.groups())
    table = [line.split() for line in lines if line.strip()[:1] in {"0", "2"}]
    assert [row[0] for row in table] == ["0", "2"]
    assert float(table[1][1]) > float(table[0][1])  # the fusion layers add parameters
