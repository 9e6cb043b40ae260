"""The model shipped in the package: loads with onnxruntime alone, stays small, keeps its accuracy."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
from edgewatch.model.data import read_labelled, split
from edgewatch.model.evaluate import evaluate_engine
from edgewatch.model.format import shipped_model_dir
from edgewatch.sidecar.engine import Engine

SHIPPED = shipped_model_dir()
META = json.loads((SHIPPED / "model.json").read_text())


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu")


def test_loads_and_classifies_without_torch():
    code = ("import sys, json; sys.modules['torch'] = None\n"
            "from sidecar.engine import Engine\n"
            "e = Engine(device='cpu'); e.warmup()\n"
            "print(json.dumps(e.classify(['$TSLA downgraded to Sell at Goldman', 'Apple beats estimates, shares jump'])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["label"] for r in results] == ["bearish", "bullish"]


def test_size_and_metadata():
    files = [SHIPPED / name for name in META["files"].values() if name]  # model, int8, decode graphs, tokenizer
    assert {"model", "int8", "decode", "decode_int8", "tokenizer"} <= set(META["files"])
    assert sum(f.stat().st_size for f in files) <= 20 * 2**20
    assert META["params"] <= 10_000_000
    assert META["training"]["data"]["license"] == "MIT"
    assert META["export_check"]["max_abs_logit_diff"] <= 1e-4 and META["export_check"]["greedy_tokens_equal"] == 64
    assert META["metrics"]["val_accuracy"] >= 0.85
    assert META["classifier"]["output"] == "sentiment_logits"


def test_text_is_prepared_as_the_model_was_trained(engine):
    """The shipped model was trained on lower-cased text (model.json says so): case cannot change a verdict."""
    assert META["prompt"]["lowercase"] is True
    loud, quiet = engine.classify(["APPLE BEATS ESTIMATES,  SHARES JUMP", "apple beats estimates, shares jump"])
    assert loud["scores"] == pytest.approx(quiet["scores"])


def test_cached_decoding_equals_full_prefill(engine):
    prompt = engine.encode("$AAPL shares rise after")
    logits, caches = engine.prefill([prompt])
    seq = list(prompt)
    for _ in range(12):
        seq.append(int(logits[0].argmax()))
        logits, caches = engine.decode_step([seq[-1]], caches)
    full, _ = engine.prefill([seq])
    np.testing.assert_allclose(logits[0], full[0], atol=1e-4)


def test_accuracy_on_validation_sample(engine, shared_data):
    """200 fixed rows of the validation split the shipped model never trained on."""
    _, val = split(read_labelled(shared_data / "financial-tweets" / "train.csv"))
    sample = random.Random(0).sample(val, 200)
    m = evaluate_engine(engine, sample)
    assert m["accuracy"] >= 0.80  # measured 0.840 on this sample (0.857 on the whole split; LM alone 0.845)
