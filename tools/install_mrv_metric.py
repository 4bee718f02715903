"""Installs the ``mrv`` evaluate module into evaluate's module cache, so that ``evaluate.load("mrv")``
works offline from any directory.

Why this works: for a name without a namespace, ``evaluate.load("mrv")`` first looks for ``./mrv/mrv.py``,
then asks the Hub for ``evaluate-metric/mrv`` and, when that fails (offline, or no such module), falls back
to the newest cached copy under ``<HF_MODULES_CACHE>/evaluate_modules/metrics/evaluate-metric--mrv/<hash>/``.
This script writes exactly that cached copy: ``mrv.py`` and ``mrv_core.py`` (the package's own file, read
through the ``evaluate_metrics/mrv/mrv_core.py`` symlink), in the layout ``evaluate`` itself creates.

Idempotent and offline: the same sources give the same hash folder, which is left as is (only its
time stamp is refreshed, so that it is the copy ``evaluate`` picks). Respects ``HF_HOME`` and
``HF_MODULES_CACHE`` (through ``evaluate.config``). Run with ``--modules-cache DIR`` to install elsewhere.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "evaluate_metrics" / "mrv"
FILES = ("mrv.py", "mrv_core.py")
CACHE_NAME = "evaluate-metric--mrv"


def _dynamic_modules_path(modules_cache: str | None) -> Path:
    """``<HF_MODULES_CACHE>/evaluate_modules``, created with its ``__init__.py`` files as evaluate does."""
    from evaluate.loading import init_dynamic_modules

    return Path(init_dynamic_modules(hf_modules_cache=modules_cache))


def _sources_hash(paths: list[Path]) -> str:
    """64 hex characters over the sources (evaluate's cache only accepts 64-character folder names)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def install(modules_cache: str | None = None, quiet: bool = False) -> Path:
    """Install (or refresh) the cached copy; returns the folder holding ``mrv.py``."""
    sources = [MODULE_DIR / name for name in FILES]
    for source in sources:
        if not source.is_file():
            raise FileNotFoundError(
                f"{source} is missing or a broken link (evaluate_metrics/mrv/mrv_core.py must link to "
                "modeling_ccr/mrv_core.py; on a checkout without symlink support copy that file there)"
            )
    base = _dynamic_modules_path(modules_cache) / "metrics"
    base.mkdir(parents=True, exist_ok=True)
    (base / "__init__.py").touch(exist_ok=True)
    module_root = base / CACHE_NAME
    module_root.mkdir(exist_ok=True)
    (module_root / "__init__.py").touch(exist_ok=True)
    target = module_root / _sources_hash(sources)
    changed = False
    target.mkdir(exist_ok=True)
    if not (target / "__init__.py").exists():
        (target / "__init__.py").touch()
        changed = True
    for source in sources:
        destination = target / source.name
        if not destination.exists() or not filecmp.cmp(source, destination, shallow=False):
            shutil.copyfile(source, destination)  # copyfile follows the mrv_core.py symlink
            changed = True
    meta = target / "mrv.json"
    if not meta.exists():
        meta.write_text(json.dumps({"original file path": str(MODULE_DIR / "mrv.py"), "local file path": str(target / "mrv.py")}))
    # evaluate picks the hash folder whose mrv.py is newest: make sure that is this one.
    newest = max(
        (p / "mrv.py").stat().st_mtime for p in module_root.iterdir() if p.is_dir() and (p / "mrv.py").exists()
    )
    if (target / "mrv.py").stat().st_mtime < newest:
        os.utime(target / "mrv.py")
        changed = True
    if not quiet:
        state = "installed" if changed else "already installed"
        print(f"mrv metric {state}: {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules-cache", default=None, help="default: evaluate's HF_MODULES_CACHE (from HF_HOME)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    install(args.modules_cache, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
