"""``lens-steer serve`` end to end: a refused vector or default steering stops it before the port opens
(exit 2, one line); a started server answers the openai client and stops on SIGINT."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading

import openai
import pytest

from lens_steer.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["other model's vector", "bad default steering", "malformed default",
                                  "vllm not installed"])
def test_refused_before_the_port_opens(tiny_dir, cot_dir, other_dir, case, capsys, monkeypatch):
    from lens_steer.engines.vllm import vllm_available
    from lens_steer.serve import http

    if case == "vllm not installed" and not vllm_available():
        pytest.skip("vLLM is installed here (tests/vllm/test_vllm_serve.py serves it)")
    def never(*args, **kwargs):
        raise AssertionError("the port was opened")

    monkeypatch.setattr(http.SteeringHTTPServer, "__init__", never)
    port = _free_port()
    argv = ["serve", "--model", str(tiny_dir), "--port", str(port), "--quiet", "--vector", f"cot={cot_dir}"]
    argv += {"other model's vector": ["--vector", f"other={other_dir}"],
             "bad default steering": ["--default-steering", "cot:9:coeff=1"],
             "malformed default": ["--default-steering", "cot:1"],
             "vllm not installed": ["--engine", "vllm"]}[case]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lens-steer")]
    assert len(errors) == 1 and errors[0].startswith("lens-steer serve: error:")
    err = errors[0]
    assert {"other model's vector": "other=", "bad default steering": "out of range", "malformed default": "coeff",
            "vllm not installed": "make setup-vllm"}[case] in err
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens


def test_serve_command_end_to_end(tiny_dir, cot_dir):
    cmd = [sys.executable, "-m", "lens_steer.cli", "serve", "--model", str(tiny_dir), "--vector", f"cot={cot_dir}",
           "--default-steering", "cot:1:coeff=2", "--served-model-name", "tiny", "--port", "0", "--quiet",
           "--api-key", "k", "--max-tokens", "6"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        banner = lines.get(timeout=120)
        assert banner.startswith("lens-steer serve: tiny on http://127.0.0.1:") and "cot:1:coeff=2.0" in banner
        url = banner.split(" on ", 1)[1].split(" ", 1)[0]
        client = openai.OpenAI(base_url=url, api_key="k", max_retries=0, timeout=60)
        resp = client.completions.create(model="tiny", prompt="Hello")
        assert resp.model_extra["lens_steer"]["source"] == "default"
        assert resp.usage.completion_tokens <= 6
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
