"""`edge-sidecar serve`: the model server on TCP or a Unix socket (docs/reference/commands.md).

Exit codes: 0 clean stop, 2 bad flag or file (one line on stderr naming it),
1 runtime failure, e.g. `--device cuda` without a usable GPU.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import structlog
from edgewatch.common import __version__, logs
from edgewatch.common.journal import error_line
from edgewatch.model.format import meta as model_meta

log = structlog.get_logger("sidecar")


class UsageError(Exception):
    """A bad flag or file: exit 2 with one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line, not the whole usage text
        raise UsageError(message)


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edge-sidecar", description="Edgewatch model sidecar (ONNX Runtime)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    s = sub.add_parser("serve", help="serve the model over HTTP")
    s.add_argument("--model", metavar="DIR", help="exported model directory (default: the shipped model)")
    s.add_argument("--host", help="TCP address (default 127.0.0.1)")
    s.add_argument("--port", type=_positive(int), help="TCP port (default 8765)")
    s.add_argument("--uds", metavar="PATH", help="serve on this Unix socket instead of TCP")
    s.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    s.add_argument("--api-key-file", metavar="F", help="require `Authorization: Bearer <key>` on /v1/*")
    s.add_argument("--int8", action="store_true", help="serve model.int8.onnx")
    s.add_argument("--threads", type=_positive(int), help="ONNX Runtime intra-op threads")
    s.add_argument("--max-batch", type=_positive(int), default=16, help="texts per classification run")
    s.add_argument("--max-wait-ms", type=float, default=1.0, help="how long a classification burst may gather")
    s.add_argument("--max-gen-batch", type=_positive(int), default=8, help="sequences in the decode batch")
    s.add_argument("--max-queue", type=_positive(int), default=256, help="queued requests before 429")
    s.add_argument("--timeout", type=_positive(float), default=30.0, help="per-request deadline, seconds (504)")
    s.add_argument("--max-body-bytes", type=_positive(int), default=1 << 20, help="larger bodies get 413")
    s.add_argument("--read-timeout", type=_positive(float), default=10.0,
                   help="seconds for a request's head, then for its body, to arrive (else 408 and closed)")
    s.add_argument("--keep-alive", type=_positive(float), default=5.0, help="seconds an idle connection stays open")
    s.add_argument("--max-connections", type=_positive(int), default=512,
                   help="open connections (lowered to fit the descriptor limit); beyond it the idlest is closed")
    s.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    return p


def _settings(args):
    from edgewatch.sidecar.state import Settings

    if args.uds and (args.host or args.port):
        raise UsageError("--uds cannot be combined with --host/--port")
    if args.model is not None:
        model = Path(args.model)
        if not (model / model_meta.META_FILE).is_file():
            raise UsageError(f"--model {args.model}: not an exported model directory (no model.json)")
    if args.max_wait_ms < 0:
        raise UsageError(f"--max-wait-ms must not be negative, got {args.max_wait_ms}")
    api_key = None
    if args.api_key_file:
        try:
            api_key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--api-key-file {args.api_key_file}: cannot read: {getattr(e, 'strerror', e)}") from None
        if not api_key:
            raise UsageError(f"--api-key-file {args.api_key_file}: the file is empty")
    if args.uds and not Path(args.uds).parent.is_dir():
        raise UsageError(f"--uds {args.uds}: directory does not exist")
    return Settings(model_dir=args.model, device=args.device, int8=args.int8, threads=args.threads, api_key=api_key,
                    max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_gen_batch=args.max_gen_batch,
                    max_queue=args.max_queue, timeout=args.timeout, max_body_bytes=args.max_body_bytes,
                    read_timeout=args.read_timeout, keep_alive=args.keep_alive, max_connections=args.max_connections)


def serve(args) -> int:
    import uvicorn
    from edgewatch.common.notify import Notifier
    from edgewatch.sidecar.app import create_app
    from edgewatch.sidecar.server import uvicorn_config

    settings = _settings(args)
    logs.setup(args.log_level, "json", stream="stderr")
    notifier = Notifier()
    failure: list[str] = []
    server: uvicorn.Server | None = None

    def load_failed(reason: str) -> None:
        failure.append(reason)
        server.should_exit = True

    def ready(model: str, provider: str) -> None:
        notifier.ready(f"serving {model} on {provider}")  # systemd Type=notify: READY=1 once warm

    watchdog = {"on_heartbeat": notifier.watchdog, "heartbeat_interval": notifier.watchdog_interval} \
        if notifier.watchdog_interval else {}  # systemd WatchdogSec: WATCHDOG=1 while serving is healthy
    app = create_app(settings, on_ready=ready, on_load_failed=load_failed, **watchdog)
    where = {"uds": args.uds} if args.uds else {"host": args.host or "127.0.0.1", "port": args.port or 8765}
    server = uvicorn.Server(uvicorn_config(app, log_level=args.log_level, **where))
    log.info("starting", **where, model=args.model or "shipped", device=args.device)
    for sig in (signal.SIGTERM, signal.SIGINT):  # uvicorn re-raises the stop signal after a clean shutdown:
        signal.signal(sig, lambda *_: None)  # let it land here, so a requested stop exits 0
    try:
        server.run()
    finally:
        notifier.stopping()
    if failure:
        print(error_line(f"edge-sidecar: {failure[0]}", sys.stderr), file=sys.stderr)
        return 1
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return serve(args)
    except UsageError as e:
        print(error_line(f"edge-sidecar: error: {e}", sys.stderr), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
