"""The ``mrv`` evaluate module, loaded as users load it, in fresh processes with a private HF_HOME."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANKS = [[1, 1, 1], [1, 3, None], [2, None, None], [2, 6, 4]]
EXPECTED = (0.0 + 1.0 + 8.0 / 3.0) / 3  # population variances of the three rows with >= 2 languages

SCRIPT = """
import json, sys
import evaluate
evaluate.logging.set_verbosity_error()
module = evaluate.load(sys.argv[1])
out = {"result": module.compute(ranks=json.loads(sys.argv[2]))}
out["std"] = module.compute(ranks=json.loads(sys.argv[2]), variant="std")["mrv"]
errors = {}
for name, bad in {"ragged": [[1, 2], [3]], "negative": [[1, -1]], "fraction": [[1, 2.5]], "empty": []}.items():
    try:
        module.compute(ranks=bad)
        errors[name] = None
    except ValueError as err:
        errors[name] = str(err)
out["errors"] = errors
out["file"] = module.__class__.__module__
print("RESULT" + json.dumps(out))
"""


def _env(hf_home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHONPATH"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    return env


def _run(args, cwd, env, timeout=240):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _result(stdout: str) -> dict:
    line = [x for x in stdout.splitlines() if x.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


def test_core_file_is_shared_not_copied():
    link = ROOT / "evaluate_metrics" / "mrv" / "mrv_core.py"
    assert link.is_symlink()
    assert os.path.samefile(link, ROOT / "modeling_ccr" / "mrv_core.py")


def _check(out):
    assert out["result"]["mrv"] == pytest.approx(EXPECTED)
    assert out["result"]["num_instances"] == 3 and out["result"]["excluded_indices"] == [2]
    assert out["std"] == pytest.approx((0.0 + 1.0 + (8.0 / 3.0) ** 0.5) / 3)
    assert "row 1 has 1 entries" in out["errors"]["ragged"]
    assert "not a valid rank" in out["errors"]["negative"]
    assert "not a valid rank" in out["errors"]["fraction"]
    assert "empty" in out["errors"]["empty"]


def test_load_by_name_after_install_from_unrelated_directory(tmp_path):
    hf_home, elsewhere = tmp_path / "hf_home", tmp_path / "somewhere_else"
    elsewhere.mkdir()
    env = _env(hf_home)
    first = _run([sys.executable, str(ROOT / "tools" / "install_mrv_metric.py")], cwd=tmp_path, env=env)
    second = _run([sys.executable, str(ROOT / "tools" / "install_mrv_metric.py")], cwd=tmp_path, env=env)
    assert "mrv metric installed" in first and "already installed" in second
    cached = list((hf_home / "modules" / "evaluate_modules" / "metrics" / "evaluate-metric--mrv").glob("*/mrv_core.py"))
    assert len(cached) == 1
    assert cached[0].read_bytes() == (ROOT / "modeling_ccr" / "mrv_core.py").read_bytes()
    out = _result(_run([sys.executable, "-c", SCRIPT, "mrv", json.dumps(RANKS)], cwd=elsewhere, env=env))
    assert "evaluate-metric--mrv" in out["file"]
    _check(out)


def test_load_from_checkout_path(tmp_path):
    out = _result(
        _run([sys.executable, "-c", SCRIPT, "evaluate_metrics/mrv", json.dumps(RANKS)], cwd=ROOT, env=_env(tmp_path))
    )
    _check(out)
