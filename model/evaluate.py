"""`edge-model eval` and `edge-model generate`: the EXPORTED model through the sidecar's Engine (no torch)."""

from __future__ import annotations

import json
import sys

import numpy as np
from edgewatch.model.data import read_labelled
from edgewatch.model.format.prompt import LABELS


def metrics(y_true: list[int], y_pred: list[int]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (rows = true)."""
    n = len(LABELS)
    cm = np.zeros((n, n), dtype=int)
    for t, p in zip(y_true, y_pred):
        cm[t, p] += 1
    per_class = {}
    for i, label in enumerate(LABELS):
        tp = cm[i, i]
        precision = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        recall = tp / cm[i, :].sum() if cm[i, :].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                            "support": int(cm[i, :].sum())}
    return {
        "n": int(cm.sum()),
        "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])),
        "per_class": per_class,
        "confusion": {"labels": list(LABELS), "matrix": cm.tolist()},
    }


def evaluate_engine(engine, rows: list[tuple[str, int]], batch_size: int = 64) -> dict:
    preds = []
    for i in range(0, len(rows), batch_size):
        results = engine.classify([text for text, _ in rows[i:i + batch_size]])
        preds += [LABELS.index(r["label"]) for r in results]
    return metrics([y for _, y in rows], preds)


def format_table(m: dict) -> str:
    lines = [f"rows {m['n']}  accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}", "",
             f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    for label, c in m["per_class"].items():
        lines.append(f"{label:<10}{c['precision']:>10.4f}{c['recall']:>10.4f}{c['f1']:>10.4f}{c['support']:>9}")
    lines += ["", "confusion (rows true, columns predicted)", f"{'':<10}" + "".join(f"{x:>10}" for x in LABELS)]
    for label, row in zip(LABELS, m["confusion"]["matrix"]):
        lines.append(f"{label:<10}" + "".join(f"{v:>10}" for v in row))
    return "\n".join(lines)


def eval_command(args) -> int:
    from edgewatch.sidecar.engine import Engine

    rows = read_labelled(args.data)
    engine = Engine(args.model, device=args.device, int8=args.int8)
    m = evaluate_engine(engine, rows)
    m["model"] = engine.name
    print(json.dumps(m) if args.json else format_table(m))
    return 0


def generate(engine, prompt: str, max_tokens: int, temperature: float = 0.0, seed: int | None = None,
             ignore_eos: bool = False) -> str:
    """Prefill once, then one cached step per token; greedy at temperature 0; stops at the context end."""
    rng = np.random.default_rng(seed)
    ids = engine.encode(prompt) or [engine.eos_id]
    ids = ids[-engine.block_size:]
    logits, caches = engine.prefill([ids])
    out: list[int] = []
    for _ in range(max_tokens):
        z = logits[0].astype(np.float64)
        if temperature > 0:
            p = np.exp((z - z.max()) / temperature)
            token = int(rng.choice(len(p), p=p / p.sum()))
        else:
            token = int(z.argmax())
        if token == engine.eos_id and not ignore_eos:
            break
        out.append(token)
        if caches[0].length >= engine.block_size:
            break
        logits, caches = engine.decode_step([token], caches)
    return engine.decode(out)


def generate_command(args) -> int:
    from edgewatch.sidecar.engine import Engine

    engine = Engine(args.model, device=args.device)
    sys.stdout.write(args.prompt + generate(engine, args.prompt, args.max_tokens, args.temperature, args.seed) + "\n")
    return 0
