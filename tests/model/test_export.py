"""Export: names, dynamic axes, parity with PyTorch, int8, and the eval/generate commands on the result."""

from __future__ import annotations

import json

import onnx
import pytest
from edgewatch.model.cli import main
from edgewatch.sidecar.engine import Engine

torch = pytest.importorskip("torch")


def test_graph_names_and_dynamic_axes(tiny_model_dir):
    from edgewatch.model.export import ExportError, check_dynamic_axes, io_names

    check_dynamic_axes(tiny_model_dir / "model.onnx", 2, sentiment=True)
    graph = onnx.load(str(tiny_model_dir / "model.onnx")).graph
    inputs, outputs = io_names(2, sentiment=True)
    assert outputs[0] == "logits" and outputs[-1] == "sentiment_logits"
    assert [i.name for i in graph.input] == inputs and [o.name for o in graph.output] == outputs
    assert inputs[3:] == ["past_key_values.0.key", "past_key_values.0.value",
                          "past_key_values.1.key", "past_key_values.1.value"]
    # a graph with a fixed batch axis is refused
    graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    bad = tiny_model_dir.parent / "fixed.onnx"
    onnx.save(onnx.load(str(tiny_model_dir / "model.onnx")), str(bad))
    proto = onnx.load(str(bad))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(proto, str(bad))
    with pytest.raises(ExportError, match="input_ids axis 0"):
        check_dynamic_axes(bad, 2, sentiment=True)


def test_decode_graph_names_and_files(tiny_model_dir):
    """The decode-step graph ships next to model.onnx: its own inputs (lengths, not a mask), the same outputs
    but the sentiment scores, fixed-size past = present buffers, any batch."""
    from edgewatch.model.export import decode_io_names

    meta = json.loads((tiny_model_dir / "model.json").read_text())
    assert meta["files"]["decode"] == "model.decode.onnx" and meta["files"]["decode_int8"] == "model.decode.int8.onnx"
    inputs, outputs = decode_io_names(2)
    assert meta["onnx"]["decode"] == {"inputs": inputs, "outputs": outputs}
    graph = onnx.load(str(tiny_model_dir / "model.decode.onnx")).graph
    assert [i.name for i in graph.input] == inputs and [o.name for o in graph.output] == outputs
    assert inputs[:4] == ["input_ids", "position_ids", "seqlens_k", "total_sequence_length"]
    assert [n.op_type for n in graph.node].count("GroupQueryAttention") == 2
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(graph.input) + list(graph.output)}
    assert dims["input_ids"] == ["batch_size", 1] and dims["logits"] == ["batch_size", 1, 330]
    assert dims["past_key_values.1.value"] == dims["present.1.value"] == ["batch_size", 2, "max_sequence_length", 16]
    int8 = Engine(tiny_model_dir, device="cpu", int8=True)
    logits, caches = int8.prefill([[1, 2, 3]])
    assert int8._decode is not None and int8.decode_step([int(logits[0].argmax())], caches)[0].shape == (1, 330)


def test_parity_recorded_and_rechecked(tiny_model_dir):
    from edgewatch.model.export import TOLERANCE, load_checkpoint, parity

    meta = json.loads((tiny_model_dir / "model.json").read_text())
    assert meta["export_check"]["max_abs_logit_diff"] <= TOLERANCE
    assert meta["export_check"]["greedy_tokens_equal"] == 64
    model, _, _ = load_checkpoint(tiny_model_dir.parent / "run" / "ckpt.pt")
    check = parity(model, Engine(tiny_model_dir, device="cpu"), seed=7)
    assert check["max_abs_logit_diff"] <= TOLERANCE


def test_exported_weights_load_back_into_pytorch(tiny_model_dir):
    """`load_exported` is the inverse of the export: every tensor equal to the checkpoint's, tokenizer too."""
    from edgewatch.model.export import load_checkpoint, load_exported

    model, tok, _ = load_checkpoint(tiny_model_dir.parent / "run" / "ckpt.pt")
    back, back_tok = load_exported(tiny_model_dir)
    expected, got = model.state_dict(), back.state_dict()
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    assert back.transformer.wte.weight is back.lm_head.weight  # still tied
    assert back_tok.encode("$ACME upgraded to Buy") == tok.encode("$ACME upgraded to Buy")


def test_shipped_model_matches_pytorch_on_its_own_weights():
    """The shipped ONNX model computes what PyTorch computes from the same weights: logits of padded
    batches and a cached step within tolerance, greedy continuations equal (no checkpoint needed)."""
    from edgewatch.model.export import TOLERANCE, load_exported, parity
    from edgewatch.model.format import shipped_model_dir

    model, _ = load_exported(shipped_model_dir())
    check = parity(model, Engine(shipped_model_dir(), device="cpu"), seed=3)
    assert check["max_abs_logit_diff"] <= TOLERANCE and check["greedy_tokens_equal"] == 64


def test_model_json(tiny_model_dir):
    meta = json.loads((tiny_model_dir / "model.json").read_text())
    assert meta["labels"] == ["bearish", "bullish", "neutral"]
    assert meta["label_mapping"] == {"0": "bearish", "1": "bullish", "2": "neutral"}
    assert meta["training"]["data"]["license"] == "MIT" and meta["training"]["data"]["val_rows"] == 24
    assert meta["params"] > 0 and meta["eos_id"] == meta["architecture"]["vocab_size"] - 5
    for key in ("val_accuracy", "val_macro_f1", "int8_val_accuracy", "int8_accuracy_change",
                "lm_alone_val_accuracy", "ngrams_alone_val_accuracy"):
        assert key in meta["metrics"]
    assert meta["classifier"]["output"] == "sentiment_logits" and meta["classifier"]["ngrams"]["buckets"] > 0
    assert meta["onnx"]["outputs"][-1] == "sentiment_logits"


def test_without_ngrams_the_lm_alone_classifies(tmp_path):
    """`edge-model train --no-ngrams`: no head, no `sentiment_logits`; the Engine reads the label tokens."""
    from edgewatch.model.export import export
    from edgewatch.model.testing import tiny_csv, train_args
    from edgewatch.model.train import train

    ckpt = train(train_args(tiny_csv(tmp_path / "tiny.csv"), tmp_path / "run", ngrams=False, max_steps=5))
    meta = export(ckpt, tmp_path / "model")
    assert meta["classifier"]["output"] == "logits" and "sentiment_logits" not in meta["onnx"]["outputs"]
    engine = Engine(tmp_path / "model", device="cpu")
    (result,) = engine.classify(["$ACME beats earnings estimates"])
    assert sum(result["scores"].values()) == pytest.approx(1.0)


def test_int8_loads_and_classifies(tiny_model_dir):
    engine = Engine(tiny_model_dir, device="cpu", int8=True)
    assert engine.name.endswith("-int8")
    (result,) = engine.classify(["$ACME beats earnings estimates"])
    assert result["label"] in engine.labels and sum(result["scores"].values()) == pytest.approx(1.0)
    assert (tiny_model_dir / "model.int8.onnx").stat().st_size < (tiny_model_dir / "model.onnx").stat().st_size


def test_eval_command(tiny_model_dir, tmp_path, capsys):
    from edgewatch.model.testing import tiny_csv

    data = tiny_csv(tmp_path / "eval.csv", rows=9, seed=3)
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["n"] == 9 and 0 <= m["accuracy"] <= 1 and 0 <= m["macro_f1"] <= 1
    assert sum(map(sum, m["confusion"]["matrix"])) == 9
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data)]) == 0
    assert "confusion" in capsys.readouterr().out


def test_generate_command(tiny_model_dir, capsys):
    assert main(["generate", "--model", str(tiny_model_dir), "$ACME", "--max-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("$ACME")
    assert main(["generate", "--model", str(tiny_model_dir), "$ACME", "--temperature", "0.8", "--seed", "1"]) == 0


def test_usage_errors_exit_2(tiny_model_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,7\n")
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(bad)]) == 2
    assert "bad.csv:2" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path), "--data", str(bad)]) == 2
    assert main(["export", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")]) == 2
