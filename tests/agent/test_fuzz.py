"""10,000 fuzzed malformed messages interleaved with valid ones, through a running agent and a broker.

Every bad message must become a dead letter with a reason, every good one must be
consumed (it is in the capture record), and the agent must stay up and stop cleanly.
"""

import json
import random
from collections import Counter

from edgewatch.agent.config import Config
from edgewatch.agent.ingest.capture import read_captures
from edgewatch.agent.ingest.validate import parse
from edgewatch.agent.records import DeadLetter
from edgewatch.agent.testing.plugin import (
    AgentProcess,
    publish_many,
    wait_for,
    wait_for_dead_letters,
)
from edgewatch.agent.timeutil import utcnow

BAD = 10_000
GOOD = 2_000

VALID = [
    ("sensors/{id}", {"temperature": 21.5, "humidity": 40.1, "status": "ok"}),
    ("market/ABC/trade", {"price": 10.5, "size": 3}),
    ("market/ABC/quote", {"bid": 10.4, "ask": 10.6}),
    ("portfolio/positions", {"symbol": "ABC", "quantity": 5}),
    ("portfolio/pnl", {"pnl": 12.5}),
    ("news/wire", {"headline": "ABC beats estimates", "symbols": ["ABC"]}),
]

HOSTILE = [  # (topic, payload bytes): one of each class of trouble docs/reference/topics.md names
    ("sensors/a", b"not json"),
    ("sensors/a", b""),
    ("sensors/a", b"[1, 2, 3]"),
    ("sensors/a", b'{"temperature": NaN}'),
    ("sensors/a", b'{"temperature": Infinity}'),
    ("sensors/a", b'{"temperature": 1e999}'),
    ("sensors/a", b'{"temperature": 1' + b"0" * 5000 + b"}"),
    ("sensors/a", b'{"temperature": "21.5"}'),
    ("sensors/a", b'{"temperature": true}'),
    ("sensors/a", b'{"temperature": 1, "nested": {"x": 1}}'),
    ("sensors/a", b'{"a": ' + b"[" * 20000 + b"]" * 20000 + b"}"),
    ("sensors/a", b'{"a": 1, "s": "\\ud800"}'),
    ("sensors/a", b'{"a": 1, "s": "\xed\xa0\x80"}'),
    ("sensors/a", b'{"a": 1, "s": "\\u0000"}'),
    ("sensors/a", b'{"a": 1}\x00'),
    ("sensors/a", b"\xff\xfe\xfd"),
    ("sensors/a", b'{"a": 1, "pad": "' + b"x" * 70_000 + b'"}'),
    ("sensors/a", b'{"a": 1, "ts": "soon"}'),
    ("sensors/a", b'{"a": 1, "ts": "2026-01-01T00:00:00"}'),
    ("sensors/a", b'{"a": 1, "ts": 99999999999}'),
    ("sensors//a", b'{"a": 1}'),
    ("sensors/a/", b'{"a": 1}'),
    ("market/ABC/bars", b'{"price": 1, "size": 1}'),
    ("market/trade", b'{"price": 1, "size": 1}'),
    ("market/ABC/trade", b'{"price": -1, "size": 1}'),
    ("market/ABC/quote", b'{"bid": 2, "ask": 1}'),
    ("portfolio/other", b'{"pnl": 1}'),
    ("portfolio/pnl", b'{"pnl": "lots"}'),
    ("news/wire", b'{"headline": ""}'),
    ("news/wire", b'{"headline": "' + b"x" * 2001 + b'"}'),
]


def mutate(rnd: random.Random, data: bytes) -> bytes:
    """One random corruption: flip, insert, delete, truncate or splice bytes."""
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(5)
        i = rnd.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(i, len(b) - 1)] = rnd.randrange(256)
        elif op == 1:
            b[i:i] = rnd.choice([b"\x00", b"\xff", b'"', b"{", b"]", b"NaN", b"\\ud83d", b",", b"1e999", b"null"])
        elif op == 2 and b:
            del b[i : i + rnd.randint(1, 8)]
        elif op == 3:
            del b[i:]
        else:
            b[i:i] = rnd.choice(HOSTILE)[1][:64]
    return bytes(b)


def fuzz_messages(seed: int = 2026) -> tuple[list, list, list]:
    """Interleaved messages, classified by the validator's rules: (messages, bad ones, good ones)."""
    rnd, cfg, now = random.Random(seed), Config(), utcnow()
    bad, good = [], []
    for topic, payload in HOSTILE:
        bad.append((topic, payload))
    while len(bad) < BAD:
        topic, obj = rnd.choice(VALID)
        topic = topic.format(id=f"s{rnd.randrange(50)}")
        payload = mutate(rnd, json.dumps(obj).encode())
        if isinstance(parse(topic, payload, now, cfg), DeadLetter):
            bad.append((topic, payload))
    for i in range(GOOD):
        topic, obj = VALID[i % len(VALID)]
        good.append((topic.format(id=f"s{i % 50}"), json.dumps(obj).encode()))
    rnd.shuffle(bad)
    messages = []
    for i, m in enumerate(bad):  # one good message after every fifth bad one
        messages.append(m)
        if i % 5 == 4:
            messages.append(good[i // 5])
    return messages, bad, good


def test_fuzzed_messages_through_the_running_agent(mqtt_broker, tmp_path):
    messages, bad, good = fuzz_messages()
    assert (len(bad), len(good)) == (BAD, GOOD)
    agent = AgentProcess(mqtt_broker, tmp_path, protocol="3.1.1").start()
    try:
        agent.wait_ready(mqtt_broker)
        publish_many(mqtt_broker, messages, timeout=120)
        dead = wait_for_dead_letters(agent.db, BAD, timeout=60)
        wait_for(lambda: sum(1 for _ in read_captures([agent.capture_dir])) >= GOOD, 30, what="good ones captured")
        assert agent.proc.poll() is None, "the agent died"
    finally:
        assert agent.stop() == 0, agent.log_tail()
    assert len(dead) == BAD  # each bad one exactly once
    assert all(d["reason"] and "internal validation error" not in d["reason"] for d in dead)
    assert Counter(d["topic"] for d in dead) == Counter(t for t, _ in bad)
    captured = list(read_captures([agent.capture_dir]))
    assert sorted((t, p) for _, t, p in captured) == sorted(good)
