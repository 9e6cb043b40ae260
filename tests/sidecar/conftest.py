"""Real models for the sidecar tests: a tiny one trained + exported here (needs torch), and the shipped one."""

from __future__ import annotations

import threading
import time

import pytest
from edgewatch.model.format import shipped_model_dir
from edgewatch.sidecar.app import Settings, create_app
from edgewatch.sidecar.engine import Engine
from edgewatch.sidecar.testing import ServerThread


@pytest.fixture(scope="session")
def shipped_dir():
    path = shipped_model_dir()
    if not (path / "model.json").is_file():
        pytest.skip("no shipped model in model/shipped yet")
    return path


@pytest.fixture(scope="session", params=["tiny", "shipped"])
def any_model_dir(request):
    return request.getfixturevalue("tiny_model_dir" if request.param == "tiny" else "shipped_dir")


class ThrottledEngine(Engine):
    """The real engine, with each decode step held back by `step_delay` s, each classification run by
    `classify_delay` s and loading held by `gate`: makes queues, deadlines and disconnects observable with a
    model that runs in microseconds."""

    def __init__(self, *args, step_delay: float = 0.0, classify_delay: float = 0.0,
                 gate: threading.Event | None = None, **kwargs):
        if gate is not None:
            gate.wait(30)
        super().__init__(*args, **kwargs)
        self.step_delay, self.classify_delay = step_delay, classify_delay

    def decode_step(self, tokens, caches):
        time.sleep(self.step_delay)
        return super().decode_step(tokens, caches)

    def classify_prompts(self, prompts):
        time.sleep(self.classify_delay)
        return super().classify_prompts(prompts)


def _serve(model_dir, *, uds=None, step_delay=0.0, classify_delay=0.0, gate=None, on_ready=None, on_heartbeat=None,
           heartbeat_interval=1.0, **settings) -> ServerThread:
    """A real uvicorn server on the model; `settings` override Settings fields."""
    cfg = Settings(model_dir=str(model_dir), device="cpu", **settings)
    factory = None
    if step_delay or classify_delay or gate:
        def factory():
            return ThrottledEngine(cfg.model_dir, device="cpu", step_delay=step_delay, classify_delay=classify_delay,
                                   gate=gate)
    app = create_app(cfg, engine_factory=factory, on_ready=on_ready, on_heartbeat=on_heartbeat,
                     heartbeat_interval=heartbeat_interval)
    return ServerThread(app, uds=uds)


@pytest.fixture(scope="session")
def serve():
    """`serve(model_dir, uds=, step_delay=, classify_delay=, gate=, on_ready=, **Settings fields)` -> a
    ServerThread context."""
    return _serve
