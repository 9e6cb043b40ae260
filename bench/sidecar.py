"""Sidecar speed on the same weights, in one run: generation tokens/s and classification over HTTP.

    python bench/sidecar.py [--checkpoint CKPT] [--tokens 120] [--seconds 3] [--threads 1] [--data CSV]
                            [--parts generation,classify,batches,http_generation]

Generation, greedy, batch 1, one prompt, `--tokens` new tokens:
  (1) PyTorch, the nanoGPT way: the whole sequence re-run for every token;
  (2) PyTorch with the KV cache;  (3) ONNX Runtime with the KV cache (the sidecar's Engine: prompt
  on model.onnx, steps on the decode graph, model.decode.onnx); (4) the same, quantised to int8;
  and, to show what the decode graph changed, (3) stepping on the general graph as before it.
Cached step (`cached_step`): µs a decode step costs through each engine from 64 cached tokens on.
Classification over HTTP against `edge-sidecar serve` in its own process (so the
load generator does not share its interpreter): one client vs 32 concurrent
clients (texts/s), CPU per request (the server's event loop and inference thread, the load
generator) and from it the ceiling of that ratio on this machine's cores, and p50/p99 latency of one
classification from one client.
Headline → `news` event: the agent's realtime news graph against that sidecar.
Batches (`batches`): in-process `Engine.classify` on 256 real tweets (the validation split of the
financial-tweets data: `--data`, by default $SHARED_DIR/data/financial-tweets/train.csv as the tests read it;
skipped with a message when absent) by batch size, rounds interleaved, the batch-1 baseline in the same run,
and a batch of 32 run as one padded run (how it ran before length groups) for comparison.
HTTP generation (`http_generation`): one client's non-streamed greedy completion of ~124 tokens over HTTP
against the same generation in process (prefill + decode steps), rounds interleaved.

Without --checkpoint it measures the shipped model (model/shipped/): PyTorch runs its
weights read back from the ONNX file (`model.export.load_exported`). With --checkpoint
that checkpoint is exported first, as `edge-model export --int8` does. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from edgewatch.model.data import read_labelled, split  # noqa: E402
from edgewatch.model.export import export, load_exported, torch_greedy  # noqa: E402
from edgewatch.model.format import shipped_model_dir  # noqa: E402
from edgewatch.sidecar.engine import Engine  # noqa: E402
from edgewatch.sidecar.testing import SidecarProcess, without_decode_graph  # noqa: E402

SHARED = Path(os.environ.get("SHARED_DIR", Path(__file__).resolve().parent.parent.parent / "shared"))
DATA = SHARED / "data" / "financial-tweets" / "train.csv"  # the reference data, read in place (tests/conftest.py)
TEXTS = ["$ACME upgraded to Buy at Citi, target raised", "Initech shares fall after weak guidance",
         "Hooli to present at Nomura conference", "Globex beats earnings estimates on strong demand"]


def rates(fns: dict, tokens: int, rounds: int = 7) -> dict:
    """Best tokens/s of each generator over `rounds` rounds that run them in turn: the machine is
    shared, so each gets the same chances at a quiet moment and the best run is the signal."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: tokens / t for name, t in best.items()}


@torch.no_grad()
def nanogpt_generate(model, prompt: list[int], n: int) -> list[int]:
    """nanoGPT's generate(): the whole (cropped) sequence through the model for every new token
    (and, as nanoGPT's forward does at inference, the head on the last position only)."""
    idx = torch.tensor([prompt])
    for _ in range(n):
        logits, _ = model(idx[:, -model.config.block_size:], last_only=True)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0, len(prompt):].tolist()


def onnx_generate(engine: Engine, prompt: list[int], n: int) -> list[int]:
    logits, caches = engine.prefill([prompt])
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits[0])))
        if len(out) < n:
            logits, caches = engine.decode_step([out[-1]], caches)
    return out


def step_costs(engines: dict[str, Engine], past: int = 64, steps: int = 32, rounds: int = 7) -> dict:
    """µs per decode step through each engine at batch 1, from `past` cached tokens on (best of `rounds`)."""
    prompt = list(range(1, past + 1))
    best = {f"{name}_step_us": float("inf") for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            logits, caches = engine.prefill([prompt])
            t0 = time.perf_counter()
            for _ in range(steps):
                logits, caches = engine.decode_step([int(np.argmax(logits[0]))], caches)
            best[f"{name}_step_us"] = min(best[f"{name}_step_us"], (time.perf_counter() - t0) / steps * 1e6)
    return {"past": past, **best}


def generation(model_dir: Path, tokens: int, threads: int, tmp: Path) -> dict:
    torch.set_num_threads(threads)  # the same compute for PyTorch and ONNX Runtime
    model, tok = load_exported(model_dir)  # the very weights the engines run
    prompt = tok.encode("$ACME upgraded to Buy")[:8]
    n = min(tokens, model.config.block_size - len(prompt))
    fp32 = Engine(model_dir, device="cpu", threads=threads)
    int8 = Engine(model_dir, device="cpu", int8=True, threads=threads)
    general = Engine(without_decode_graph(model_dir, tmp / "general"), device="cpu", threads=threads)
    same = (nanogpt_generate(model, prompt, n) == torch_greedy(model, prompt, n) == onnx_generate(fp32, prompt, n)
            == onnx_generate(general, prompt, n))
    out = {
        "tokens": n,
        "greedy_equal_torch_onnx": same,
        **rates({"torch_nocache_tok_s": lambda: nanogpt_generate(model, prompt, n),
                 "torch_kvcache_tok_s": lambda: torch_greedy(model, prompt, n),
                 "onnx_kvcache_tok_s": lambda: onnx_generate(fp32, prompt, n),
                 "onnx_int8_tok_s": lambda: onnx_generate(int8, prompt, n),
                 "onnx_general_graph_tok_s": lambda: onnx_generate(general, prompt, n)}, n),
        "cached_step": step_costs({"onnx": fp32, "onnx_int8": int8, "onnx_general_graph": general}),
        "params": model.num_params(),
        "arch": {k: getattr(model.config, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")},
    }
    out["ratio_onnx_vs_nocache"] = out["onnx_kvcache_tok_s"] / out["torch_nocache_tok_s"]
    out["ratio_onnx_vs_torch_kvcache"] = out["onnx_kvcache_tok_s"] / out["torch_kvcache_tok_s"]
    out["ratio_decode_graph_vs_general_graph"] = out["onnx_kvcache_tok_s"] / out["onnx_general_graph_tok_s"]
    return out


async def classify_load(url: str, clients: int, seconds: float) -> tuple[float, list[float]]:
    """`clients` independent keep-alive connections, each sending one-text requests back to back for
    `seconds`: (texts/s, latencies). A wrk-style load generator (pre-encoded requests, Content-Length
    framing) rather than httpx, whose ~1-2 ms of client CPU per request would be what this 2-core
    machine measures instead of the server."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def client(i: int):
        body = json.dumps({"texts": [TEXTS[i % len(TEXTS)] + f" #{i}"]}).encode()
        request = (f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(head.decode(errors="replace").splitlines()[0])
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return len(latencies) / (time.perf_counter() - t0), latencies


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of process `pid`, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return out


def loaded(url: str, pid: int, clients: int, seconds: float) -> dict:
    """`classify_load`, plus CPU per request: the server's event-loop (main) thread, the rest of the server
    (the inference thread; ONNX Runtime runs in it with one intra-op thread), and the load generator."""
    before, client = thread_cpu(pid), time.process_time()
    rate, latencies = asyncio.run(classify_load(url, clients, seconds))
    after, client = thread_cpu(pid), time.process_time() - client
    n = len(latencies)
    main = after.get(pid, 0.0) - before.get(pid, 0.0)
    rest = sum(after.values()) - sum(before.values()) - main
    return {"rate": rate, "latencies": latencies, "server_main_us": main / n * 1e6, "server_other_us": rest / n * 1e6,
            "client_us": client / n * 1e6}


def ceiling(one: dict, many: dict) -> float:
    """The most `many` clients could gain over one on this machine's cores: all of them busy doing the CPU work
    a request cost under that load, against one client's request time (its round trip, work done serially)."""
    cpu = many["server_main_us"] + many["server_other_us"] + many["client_us"]
    return len(os.sched_getaffinity(0)) * (1e6 / one["rate"]) / cpu


def one_client_latency(url: str, n: int) -> list[float]:
    """Sequential single-text classifications with a keep-alive client (the agent's pattern)."""
    out = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(n):
            t0 = time.perf_counter()
            http.post("/v1/classify", json={"texts": [TEXTS[i % len(TEXTS)] + f" {i}"]}).raise_for_status()
            out.append(time.perf_counter() - t0)
    return out


def headline_to_event(url: str, n: int) -> list[float]:
    """Seconds from a headline entering the realtime news graph to its `news` event leaving it."""
    import csp
    from csp.impl.genericpushadapter import GenericPushAdapter
    from edgewatch.agent.analytics.news import news_graph
    from edgewatch.agent.config import Config
    from edgewatch.agent.records import Headline

    cfg = Config()
    cfg.sidecar.url = url
    adapter = GenericPushAdapter(list[Headline])

    @csp.graph
    def g():
        csp.add_graph_output("events", news_graph(adapter.out(), cfg).events)

    runner = csp.run_on_thread(g, realtime=True, endtime=timedelta(minutes=5))
    adapter.wait_for_start()
    for i in range(n):
        adapter.push_tick([Headline(source="bench", ts=datetime.utcnow(), headline=f"{TEXTS[i % 4]} ({i})",
                                    symbols=["ACME"], id=str(i))])
        time.sleep(0.02)
    time.sleep(0.5)
    runner.stop_engine()
    result = runner.join()
    events = [(tick, e) for tick, batch in result["events"] for e in batch]
    assert len(events) == n and not any(e.data["degraded"] for _, e in events), "news events missing or degraded"
    return [(tick - e.ts).total_seconds() for tick, e in events]


def spread(xs: list[float]) -> dict:
    """Range and median of interleaved repeats: on a shared machine the range is the honest figure."""
    return {"min": round(min(xs), 3), "median": round(float(np.median(xs)), 3), "max": round(max(xs), 3)}


def real_tweets(path: Path, n: int = 256) -> list[str] | None:
    """The first `n` tweets of the data's validation split (model.data.split), None when the file is absent."""
    if not path.is_file():
        print(f"bench/sidecar.py: {path} not found: skipping the batches on real tweets (give --data)",
              file=sys.stderr)
        return None
    return [text for text, _ in split(read_labelled(path))[1][:n]]


def classify_batches(engine: Engine, texts: list[str], sizes: tuple[int, ...] = (1, 8, 32), rounds: int = 7) -> dict:
    """Texts/s of `Engine.classify_prompts` on real tweets by batch size (tokenized beforehand: the engine's
    cost alone), every size in turn each round; `padded_32`: a batch of 32 as one padded run that also
    copies out its keys and values, as classification ran before length groups."""
    prompts = [engine.classification_prompt(t) for t in texts]
    runs = {f"batch_{size}": (lambda size=size: [engine.classify_prompts(prompts[i:i + size])
                                                 for i in range(0, len(prompts), size)]) for size in sizes}
    runs["padded_32"] = lambda: [engine._prompts(prompts[i:i + 32], sentiment=engine._sentiment)
                                 for i in range(0, len(prompts), 32)]
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            rates[name].append(len(prompts) / (time.perf_counter() - t0))
    lengths = [len(p) for p in prompts]
    out = {"texts": len(prompts), "mean_tokens": round(float(np.mean(lengths)), 1), "max_tokens": max(lengths),
           "rounds": rounds, **{f"{name}_texts_s": spread(r) for name, r in rates.items()}}
    for name in [*(f"batch_{s}" for s in sizes if s != 1), "padded_32"]:
        out[f"{name}_vs_batch_1"] = spread([a / b for a, b in zip(rates[name], rates["batch_1"])])
    return out


def http_generation(url: str, pid: int, engine: Engine, rounds: int = 15) -> dict:
    """One client's non-streamed greedy completion over HTTP against the same tokens generated in process,
    alternated each round: tokens/s of each and their ratio per round; and, steadier on a busy machine, tokens
    per CPU-second: the server process's (every thread, from /proc) against the in-process generation's."""
    prompt = "apple shares"
    ids = engine.encode(prompt)
    n = min(124, engine.block_size - len(ids) - 1)
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True}
    rates: dict[str, list[float]] = {"engine_tok_s": [], "http_tok_s": []}
    cpu = {"engine": 0.0, "http": 0.0}  # CPU seconds over all rounds (/proc counts in 10 ms ticks)
    with httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(2):  # warm both paths
            http.post("/v1/completions", json=body).raise_for_status()
            onnx_generate(engine, ids, n)
        for _ in range(rounds):
            t0, cpu0 = time.perf_counter(), time.thread_time()
            onnx_generate(engine, ids, n)
            rates["engine_tok_s"].append(n / (time.perf_counter() - t0))
            cpu["engine"] += time.thread_time() - cpu0
            cpu0, t0 = sum(thread_cpu(pid).values()), time.perf_counter()
            r = http.post("/v1/completions", json=body)
            rates["http_tok_s"].append(n / (time.perf_counter() - t0))
            cpu["http"] += sum(thread_cpu(pid).values()) - cpu0
            r.raise_for_status()
            assert r.json()["usage"]["completion_tokens"] == n
    return {"tokens": n, "rounds": rounds, **{name: spread(r) for name, r in rates.items()},
            "http_vs_engine": spread([h / e for h, e in zip(rates["http_tok_s"], rates["engine_tok_s"])]),
            "http_vs_engine_best": round(max(rates["http_tok_s"]) / max(rates["engine_tok_s"]), 3),
            "engine_tok_cpu_s": round(n * rounds / cpu["engine"]),
            "http_server_tok_cpu_s": round(n * rounds / cpu["http"]),
            "http_vs_engine_cpu": round(cpu["engine"] / cpu["http"], 3)}


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q) * 1000)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a training checkpoint to export and measure (default: the shipped model)")
    ap.add_argument("--tokens", type=int, default=120)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads for PyTorch, ONNX Runtime and the sidecar (1 leaves the second core "
                         "of a 2-core box to the HTTP event loop)")
    ap.add_argument("--data", type=Path, default=DATA, help="the financial-tweets train.csv (real tweets for the "
                                                             "batches; default: $SHARED_DIR/data/financial-tweets)")
    ap.add_argument("--parts", default="generation,classify,batches,http_generation",
                    help="comma-separated parts to run (default: all)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = shipped_model_dir()
        if args.checkpoint:
            model_dir = tmp / "model"
            export(args.checkpoint, model_dir, int8=True, data=tmp / "none.csv", name="bench-nanogpt")
        result = {"bench": "sidecar", "model": str(args.checkpoint or model_dir), "threads": args.threads}
        engine = Engine(model_dir, device="cpu", threads=args.threads)
        if "batches" in parts:
            tweets = real_tweets(args.data)
            result["batches"] = classify_batches(engine, tweets) if tweets else {"skipped": f"{args.data} not found"}
        if "http_generation" in parts:
            with SidecarProcess(model_dir, "--threads", str(args.threads)) as sidecar:
                result["http_generation"] = http_generation(sidecar.url, sidecar.proc.pid, engine)
        if "generation" in parts:
            result["generation"] = generation(model_dir, args.tokens, args.threads, tmp)
        if "classify" in parts:
            result.update(classify_http(model_dir, args))
    print(json.dumps(result))
    return 0


def classify_http(model_dir: Path, args: argparse.Namespace) -> dict:
    """Classification over HTTP (1 vs 32 clients, latency) and headline → `news` event, against one sidecar."""
    result = {}
    with SidecarProcess(model_dir, "--threads", str(args.threads)) as sidecar:
        one_client_latency(sidecar.url, 50)  # warm the connection path
        single = one_client_latency(sidecar.url, 400)
        one = many = {"rate": 0.0}
        for _ in range(3):  # alternate, keep the best of each: the machine is shared
            one = max(one, loaded(sidecar.url, sidecar.proc.pid, 1, args.seconds), key=lambda r: r["rate"])
            many = max(many, loaded(sidecar.url, sidecar.proc.pid, 32, args.seconds), key=lambda r: r["rate"])
        news = headline_to_event(sidecar.url, 200)
    result["classify"] = {
        "p50_ms": pct(single, 50), "p99_ms": pct(single, 99),
        "one_client_texts_s": one["rate"], "32_clients_texts_s": many["rate"],
        "ratio_32_vs_1": many["rate"] / one["rate"], "ceiling_32_vs_1": ceiling(one, many),
        "32_clients_p50_ms": pct(many["latencies"], 50),
        "32_clients_p99_ms": pct(many["latencies"], 99),
        "cpu_us_per_request": {f"{k}_clients_{t}": r[f"{t}_us"] for k, r in (("1", one), ("32", many))
                               for t in ("server_main", "server_other", "client")},
    }
    result["headline_to_news_event"] = {"n": len(news), "p50_ms": pct(news, 50), "p99_ms": pct(news, 99),
                                        "max_ms": max(news) * 1000}
    return result


if __name__ == "__main__":
    sys.exit(main())
