"""Prints the dependencies of pyproject.toml (runtime and dev), one per line, for pip -r."""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib


def requirements(dev: bool = True) -> list[str]:
    """The runtime dependencies, plus the ``dev`` extra (tests, lint) when ``dev``."""
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + (project.get("optional-dependencies", {}).get("dev", []) if dev else [])


if __name__ == "__main__":
    sys.stdout.write("\n".join(requirements()) + "\n")
