"""Prints the dependencies of pyproject.toml (runtime and dev), one per line, for pip -r."""

import sys
from pathlib import Path

import tomllib

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
extras = project.get("optional-dependencies", {})
sys.stdout.write("\n".join(project["dependencies"] + extras.get("dev", [])) + "\n")
