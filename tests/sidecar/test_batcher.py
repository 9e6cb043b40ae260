"""The batcher hands a sequence's items to the event loop in few wake-ups: once for a whole completion,
at most once per token for a stream (coalesced when the loop is behind)."""

from __future__ import annotations

import asyncio
import time

import pytest
from edgewatch.sidecar.batcher import Batcher
from edgewatch.sidecar.engine import Engine
from edgewatch.sidecar.sampling import SamplingParams


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine(tiny_model_dir, device="cpu", threads=1)


@pytest.fixture
def batcher(engine):
    b = Batcher(engine)
    b.start()
    yield b
    b.stop()


def _count_wakeups(loop: asyncio.AbstractEventLoop) -> list[int]:
    calls, schedule = [0], loop.call_soon_threadsafe

    def counting(*args, **kwargs):
        calls[0] += 1
        return schedule(*args, **kwargs)

    loop.call_soon_threadsafe = counting
    return calls


@pytest.mark.parametrize("stream", [False, True])
async def test_wakeups_per_sequence(batcher, engine, stream):
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    prompt = engine.encode("ACME shares")
    calls = _count_wakeups(asyncio.get_running_loop())
    items = [item async for item in batcher.generate(prompt, params, 40, time.monotonic() + 30, stream=stream)]
    assert items[-1] == ("done", "length", 40)
    text = "".join(item[1] for item in items if item[0] == "text")
    if stream:
        assert 1 <= calls[0] <= 41  # one per token at most, fewer when the loop is behind
    else:
        assert calls[0] == 1  # the whole completion in one hand-off
    solo = [item async for item in batcher.generate(prompt, params, 40, time.monotonic() + 30, stream=not stream)]
    assert "".join(item[1] for item in solo if item[0] == "text") == text
