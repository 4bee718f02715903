"""The package works installed, not only from a checkout: a wheel built from the repository, installed into
a folder of its own, renders a model card and loads EmojiCCR from an unrelated directory."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests._push_helpers import write_plain_model_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_the_template_and_data_and_works_from_elsewhere(tmp_path):
    # Built from a copy, so no build/ folder of an earlier build (stale files included) takes part.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "outputs", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "runs"))
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "modeling_ccr/shipped/MODEL_CARD.md" in names
    assert "modeling_ccr/shipped/data/emoji_ccr/test.parquet" in names

    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    folder = write_plain_model_folder(tmp_path / "model")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(target)!r})
        import modeling_ccr
        from modeling_ccr.emoji_dataset import load_emoji_ccr
        from modeling_ccr.model_card import render_model_card
        card = render_model_card({str(folder)!r}, repo_id="ns/tiny")
        test = load_emoji_ccr("test")
        print(json.dumps({{"package": modeling_ccr.__file__, "card": str(card), "rows": len(test),
                           "languages": sorted({{c["language"] for caps in test["captions"] for c in caps}})}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_DATASETS_CACHE"] = str(tmp_path / "datasets-cache")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["package"].startswith(str(target))  # the installed copy, not this checkout
    assert "model-index:" in got["card"] and "| de | 11.00 |" in got["card"]
    assert got["rows"] > 50 and got["languages"] == ["cs", "de", "en", "fr", "ja", "zh"]
