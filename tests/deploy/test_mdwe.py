"""Proof for `MemoryDenyWriteExecute=yes` in the agent's unit: the agent works under the same seccomp filter.

systemd 252 enforces the directive with a seccomp filter; `mdwe.py` installs that
filter and runs the real `edge-agent run` under it (csp engine, paho, SQLite,
prometheus endpoint). ONNX Runtime on the CPU is checked too, as evidence for the
sidecar; its unit leaves the directive off because the CUDA driver is unproven.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from edgewatch.agent.testing.harness import (
    Mosquitto,
    free_port,
    publish_many,
    subscribe_collect,
    wait_for,
    wait_for_dead_letters,
    write_config,
)
from edgewatch.agent.testing.plugin import require
from prometheus_client.parser import text_string_to_metric_families

MDWE = [sys.executable, str(Path(__file__).with_name("mdwe.py"))]


def test_the_filter_denies_writable_executable_memory():
    code = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)"
    r = subprocess.run([*MDWE, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "PermissionError" in r.stderr
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0  # and only because of the filter


def test_agent_runs_under_memory_deny_write_execute(tmp_path):
    require("mosquitto", Mosquitto.binary() is not None, "the `mosquitto` binary is not on PATH")
    broker = Mosquitto(tmp_path / "broker").start()
    port = free_port()
    db = tmp_path / "events.db"
    config = write_config(tmp_path / "agent.toml", {
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": "mdwe-test"},
        "store": {"url": str(db)}, "metrics": {"listen": f"127.0.0.1:{port}"}, "news": {"enabled": False},
    })
    log = open(tmp_path / "agent.log", "wb")
    proc = subprocess.Popen([*MDWE, "-m", "edgewatch.agent.cli", "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        with subscribe_collect(broker, "edgewatch/status") as status:
            wait_for(lambda: any(json.loads(p)["state"] == "online" for _, p in list(status)) or proc.poll() is not None,
                     timeout=30, what="agent online")
        assert proc.poll() is None, (tmp_path / "agent.log").read_text()[-3000:]
        t0 = datetime.now(timezone.utc) - timedelta(seconds=300)
        readings = [(f"sensors/s{i % 5}", {"ts": (t0 + timedelta(seconds=i)).isoformat(), "temperature": 20 + (i % 7) / 10})
                    for i in range(300)]
        publish_many(broker, [*readings, ("sensors/s0", b"not json")])
        assert wait_for_dead_letters(db, 1, timeout=20)[0]["reason"]

        def sensor_messages() -> float:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                       if s.name == "edgewatch_messages_in_total" and s.labels.get("kind") == "sensor")

        wait_for(lambda: sensor_messages() >= 300, timeout=20, what="300 readings through the engine")
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        broker.stop()
    text = (tmp_path / "agent.log").read_text()
    assert "Operation not permitted" not in text and "agent_ready" in text


def test_onnxruntime_cpu_inference_under_memory_deny_write_execute():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    code = """
import numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper
w = helper.make_tensor("w", TensorProto.FLOAT, [64, 3], np.random.default_rng(0).standard_normal(64 * 3).astype("float32"))
graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=-1)],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])], [w])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
y = session.run(None, {"x": np.ones((256, 64), "float32")})[0]
assert y.shape == (256, 3) and abs(float(y.sum()) - 256) < 1e-3
print("ok", session.get_providers())
"""
    r = subprocess.run([*MDWE, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]
