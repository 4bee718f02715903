"""The MRV metric's Space app (evaluate_metrics/mrv/app.py) starts with the Gradio its card pins and answers
requests through gradio_client."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import gradio
import pytest
from _server_helpers import connect, free_port, local_env, stop

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "evaluate_metrics" / "mrv" / "app.py"


def test_card_pins_the_installed_gradio_major_version():
    card = (APP.parent / "README.md").read_text()
    pinned = re.search(r"^sdk_version: (\S+)$", card, re.M).group(1)
    assert pinned.split(".")[0] == gradio.__version__.split(".")[0], (pinned, gradio.__version__)


def test_space_app_answers_through_gradio_client(tmp_path):
    port = free_port()
    env = dict(local_env(), GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), HF_HOME=str(tmp_path / "hf"),
               HF_EVALUATE_OFFLINE="1")
    space = tmp_path / "space"  # the Space's files alone, as uploaded (mrv_core.py resolved from its link)
    space.mkdir()
    for name in ("app.py", "mrv.py", "mrv_core.py", "README.md", "requirements.txt"):
        (space / name).write_bytes((APP.parent / name).read_bytes())
    process = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        client = connect(f"http://127.0.0.1:{port}/", process)
        result = client.predict("[[1, 1, 1], [1, 3, null], [2, null, null]]", "variance", api_name="/compute")
        assert result == {"mrv": 0.5, "variant": "variance", "num_instances": 2, "num_excluded": 1,
                          "excluded_indices": [2]}
        assert client.predict("[[1, 5]]", "std", api_name="/compute")["mrv"] == pytest.approx(2.0)
        with pytest.raises(Exception, match="JSON"):
            client.predict("[[1, 2", "variance", api_name="/compute")
        with pytest.raises(Exception, match="rank"):
            client.predict("[[1, -1]]", "variance", api_name="/compute")
    finally:
        stop(process)
