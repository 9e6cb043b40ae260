"""The notify protocol against a fake NOTIFY_SOCKET (an AF_UNIX datagram socket in tmp)."""

from __future__ import annotations

import os
import socket
import threading
import time
from datetime import timedelta

import csp
import pytest
from edgewatch.agent.ops.heartbeat import Heartbeat, heartbeat
from edgewatch.common.notify import Notifier


@csp.node
def stall_after(delay: timedelta, hold: float, stalled: object):
    """Block the engine thread once, like a hung graph."""
    with csp.alarms():
        a = csp.alarm(bool)
    with csp.start():
        csp.schedule_alarm(a, delay, True)
    if csp.ticked(a):
        stalled.set()
        time.sleep(hold)


@pytest.fixture
def notify_socket(tmp_path):
    """A listening datagram socket like systemd's; yields (path, receive-all function)."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.05)

    def received() -> list[dict[str, str]]:
        out = []
        while True:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                return out
            out.append(dict(line.split("=", 1) for line in data.decode().split("\n")))

    yield path, received
    sock.close()


def test_messages_reach_the_socket(notify_socket):
    path, received = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.status("connecting to\nbroker")  # newlines cannot split a field
    assert n.ready("running: 3 inputs")
    assert n.reloading("reloading configuration")
    assert n.watchdog()
    assert n.stopping("stopping")
    msgs = received()
    assert msgs[0] == {"STATUS": "connecting to broker"}
    assert msgs[1] == {"READY": "1", "STATUS": "running: 3 inputs"}
    assert msgs[2]["RELOADING"] == "1" and msgs[2]["STATUS"] == "reloading configuration"
    usec = int(msgs[2]["MONOTONIC_USEC"])  # systemd matches it against CLOCK_MONOTONIC
    assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 5_000_000
    assert msgs[3] == {"WATCHDOG": "1"}
    assert msgs[4] == {"STOPPING": "1", "STATUS": "stopping"}
    n.close()


def test_abstract_socket_address():
    name = f"edgewatch-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_outside_systemd_is_a_no_op(tmp_path):
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None
    assert n.ready("x") is False
    # a manager that went away never raises into the service
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).ready() is False


def test_a_backlogged_manager_never_blocks_the_caller(notify_socket):
    path, received = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    t0 = time.monotonic()
    sent = [n.watchdog() for _ in range(1000)]  # nobody reads: the datagram queue fills up
    assert time.monotonic() - t0 < 1.0
    assert sent[0] and not sent[-1]
    assert len(received()) == sent.count(True)


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "10000000"}, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(env, interval):
    assert Notifier(env).watchdog_interval == interval


def test_heartbeat_pings_at_most_every_third_of_an_interval(notify_socket):
    path, received = notify_socket
    hb = Heartbeat(Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000"}), max_age=1.0)
    assert not hb.fresh()  # never beaten: not alive yet
    for _ in range(50):
        hb.beat()
    assert received() == [{"WATCHDOG": "1"}]  # one ping per 0.1 s, not per beat
    time.sleep(0.12)
    hb.beat()
    assert received() == [{"WATCHDOG": "1"}]
    assert hb.fresh() and hb.beats == 51


def test_engine_heartbeat_feeds_watchdog_and_stops_when_stalled(notify_socket):
    """A realtime csp graph beats; a node that blocks the engine stops the pings and /health freshness."""
    path, received = notify_socket
    hb = Heartbeat(Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "80000"}), max_age=0.15)
    stalled = threading.Event()

    def graph():
        heartbeat(hb, timedelta(milliseconds=10))
        stall_after(timedelta(milliseconds=400), 0.6, stalled)

    runner = threading.Thread(target=csp.run, args=(graph,), kwargs={"realtime": True, "endtime": timedelta(seconds=1.2)})
    runner.start()
    assert stalled.wait(5)
    before = received()
    assert len(before) >= 5 and all(m == {"WATCHDOG": "1"} for m in before)
    time.sleep(0.3)
    assert not hb.fresh()  # /health would say 503 now
    assert received() == []  # no pings while the engine is stuck: systemd would restart it
    runner.join(5)
    assert received(), "pings resume once the engine cycles again"


def test_a_long_step_of_the_start_keeps_the_manager_waiting(notify_socket):
    path, received = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    with n.busy("warming 2 states up from the captures", every=0.05):
        time.sleep(0.22)
    msgs = received()
    assert 4 <= len(msgs) <= 6  # at once, then every 0.05 s while the step runs, none after it
    assert all(m == {"WATCHDOG": "1", "EXTEND_TIMEOUT_USEC": "150000", "STATUS": "warming 2 states up from the captures"}
               for m in msgs)
    time.sleep(0.1)
    assert received() == []
