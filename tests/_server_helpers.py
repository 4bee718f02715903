"""Start local servers (the demo, the MRV Space app) for tests: 127.0.0.1 only, no proxy, analytics off."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_env() -> dict[str, str]:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", NO_PROXY="127.0.0.1,localhost")
    return {k: v for k, v in env.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}


def serve(args: list[str], cwd: Path, ready: str, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """Start a server process and wait for the line that names its URL."""
    process = subprocess.Popen([sys.executable, *args], cwd=cwd, env=local_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline, lines = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        lines.append(line)
        if ready in line:
            return process, line.split(ready, 1)[1].strip().split()[0]
    process.kill()
    raise AssertionError("server did not start:\n" + "".join(lines[-40:]))


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def connect(url: str, process: subprocess.Popen, timeout: float = 120):
    """A gradio_client Client for ``url`` once the server answers (fails with the server's output if it died)."""
    from gradio_client import Client

    deadline = time.monotonic() + timeout
    while True:
        try:
            return Client(url, verbose=False)
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the server did not start:\n" + process.stdout.read()[-3000:]) from None
            time.sleep(1)
