"""A tiny trained + exported model for tests (model and sidecar): seconds to build, real artifacts.

Needs torch (the train extra); callers skip with pytest.importorskip("torch").
"""

from __future__ import annotations

import csv
import random
from argparse import Namespace
from pathlib import Path

from edgewatch.model.format.prompt import LABELS

_SUBJECTS = ["$ACME", "$BOLT", "Globex", "Initech", "$UMBR", "Hooli", "Stark Industries", "$WAYN"]
_PHRASES = {
    0: ["cut to Sell at {b}", "shares fall after weak guidance", "misses earnings estimates", "plunges on probe"],
    1: ["upgraded to Buy at {b}", "shares jump after strong guidance", "beats earnings estimates", "soars on deal"],
    2: ["to present at {b} conference", "announces board meeting date", "files quarterly report", "CEO interview"],
}
_BANKS = ["Jefferies", "Citi", "Nomura", "Barclays"]


def tiny_csv(path: str | Path, rows: int = 240, seed: int = 0) -> Path:
    """A labelled CSV (text,label) of templated headlines, with a little non-ASCII text."""
    rng = random.Random(seed)
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(rows):
            label = i % len(LABELS)
            text = f"{rng.choice(_SUBJECTS)} {rng.choice(_PHRASES[label]).format(b=rng.choice(_BANKS))}"
            if rng.random() < 0.2:
                text += " https://t.co/" + "".join(rng.choices("abcXYZ019", k=10)) + " — €"
            w.writerow([text, label])
    return path


def train_args(data: Path, out: Path, **overrides) -> Namespace:
    """`edge-model train` arguments of a tiny configuration (2 layers x 32)."""
    args = dict(data=str(data), out=str(out), device="cpu", seed=0, epochs=1, max_steps=20, stop_after=0,
                resume=False, threads=0, compile=False, batch_size=16, lr=3e-3, min_lr=1e-4, weight_decay=0.1,
                ema=0.5, lm_weight=0.5, pretrain_epochs=0, label_smoothing=0.0, lowercase=True, token_noise=0.0,
                ngrams=True,
                eval_every=10, vocab_size=330, block_size=80, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    return Namespace(**(args | overrides))


def tiny_model(workdir: str | Path, int8: bool = False) -> Path:
    """Train 20 steps on tiny_csv, export to <workdir>/model; returns that exported model directory."""
    from edgewatch.model.export import export
    from edgewatch.model.train import train

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = tiny_csv(workdir / "tiny.csv")
    ckpt = train(train_args(data, workdir / "run"))
    export(ckpt, workdir / "model", int8=int8, name="tiny-nanogpt")
    return workdir / "model"
