#!/usr/bin/env bash
# Creates .venv with everything the project needs, once. Reuses an installed torch when the base
# Python has one; otherwise installs torch==2.13.0 (a CPU wheel on this project's machines) before
# anything else can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

# pip, with the noise of this machine's local package mirrors filtered out; keeps pip's exit status.
quiet_pip() {
  .venv/bin/python -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}
PY=${PYTHON:-python3}
# The demo's browser test drives headless Chromium through chromedriver: Debian's packages.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing chromium and chromium-driver (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "setup: chromium / chromedriver missing and apt-get unavailable (as root): the browser test will be skipped"
  fi
fi
stamp=.venv/.setup-done
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi
if [ ! -x .venv/bin/python ]; then
  if "$PY" -c "import torch" 2>/dev/null; then
    echo "setup: reusing the torch of $PY"
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==2.13.0 (CPU wheel)"
  quiet_pip "torch==2.13.0"
fi
echo "setup: installing the dependencies listed in pyproject.toml"
# Dependencies only: the package itself stays un-installed so that tests can prove the remote-code
# files work in a process that cannot import it. Scripts and tests find it from the repository root.
.venv/bin/python tools/list_requirements.py >.venv/requirements.txt
quiet_pip -r .venv/requirements.txt
.venv/bin/python -c "import torch, transformers, datasets, evaluate, accelerate"
# Makes evaluate.load("mrv") work offline from any directory.
.venv/bin/python tools/install_mrv_metric.py
touch "$stamp"
