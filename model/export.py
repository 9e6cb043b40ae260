"""`edge-model export`: the trained GPT as ONNX with a KV cache, plus model.json and tokenizer.json.

Names follow Hugging Face optimum / onnxruntime-genai: inputs `input_ids`,
`attention_mask`, `position_ids`, `past_key_values.{i}.key|value`; outputs
`logits`, `present.{i}.key|value`. Batch, sequence and past axes are dynamic
(asserted after export). The graph is written from the weights by
`model.builder`, not traced; the export checks itself against PyTorch before
anything is written to --out.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import onnx
import structlog
import torch
from edgewatch.model import ngrams
from edgewatch.model.builder import OPSET, build, build_decode
from edgewatch.model.data import read_labelled, split
from edgewatch.model.evaluate import evaluate_engine
from edgewatch.model.format.prompt import (
    FORMAT,
    LABEL_TOKENS,
    LABELS,
    SENTIMENT,
    label_ids,
)
from edgewatch.model.format import meta as model_meta
from edgewatch.model.format.tokenizer import Tokenizer
from edgewatch.model.gpt import GPT, GPTConfig
from onnx import numpy_helper

log = structlog.get_logger("edgewatch.model.export")
TOLERANCE = 1e-4
GREEDY_TOKENS = 64
# provenance of the training data (docs/model-card.md)
DATA_NAME = "Twitter Financial News sentiment (zeroshot/twitter-financial-news-sentiment), training split"
DATA_LICENSE = "MIT"


class ExportError(RuntimeError):
    """The exported graph does not match PyTorch or lost a dynamic axis."""


def load_checkpoint(path: str | Path) -> tuple[GPT, Tokenizer, dict]:
    """The EMA weights of a training checkpoint, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = GPT(GPTConfig(**ckpt["config"]))
    ema = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    model.load_state_dict(ema)
    return model.eval(), Tokenizer.from_json(ckpt["tokenizer"]), ckpt


def load_exported(model_dir: str | Path) -> tuple[GPT, Tokenizer]:
    """The PyTorch GPT back from an exported model's weights, in eval mode: PyTorch runs on the shipped
    weights (a benchmark, a parity check) without the training checkpoint, which does not ship.

    The inverse of `model.builder.build`: its initializers are named after the module's parameters,
    `*.weight_t` transposed, the head tied to `wte`.
    """
    model_dir = Path(model_dir)
    meta = model_meta.load(model_dir)
    arch = meta["architecture"]  # `write_meta` wrote GPTConfig.to_dict() into it
    model = GPT(GPTConfig(**{f.name: arch[f.name] for f in fields(GPTConfig)}))
    graph = onnx.load(str(model_dir / meta["files"]["model"])).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    renamed = {"lm_head.weight": "wte", "transformer.wte.weight": "wte", "transformer.wpe.weight": "wpe"}
    state = {}
    for name in model.state_dict():
        key = renamed.get(name, name.removeprefix("transformer."))
        w = weights[f"{key}_t"].T if f"{key}_t" in weights else weights[key]
        state[name] = torch.tensor(w)
    model.load_state_dict(state)
    return model.eval(), Tokenizer.load(model_dir / meta["files"]["tokenizer"])


def ngram_head(ckpt: dict) -> ngrams.NgramHead | None:
    """The checkpoint's bag-of-n-grams head (`edge-model train --ngrams`), if it has one."""
    return ngrams.NgramHead(**ckpt["ngrams"]) if ckpt.get("ngrams") else None


def io_names(n_layer: int, sentiment: bool = False) -> tuple[list[str], list[str]]:
    """Graph inputs and outputs; `sentiment`: the n-gram head's `sentiment_logits` output comes last."""
    kv = [(i, k) for i in range(n_layer) for k in ("key", "value")]
    return (["input_ids", "attention_mask", "position_ids"] + [f"past_key_values.{i}.{k}" for i, k in kv],
            ["logits"] + [f"present.{i}.{k}" for i, k in kv] + (["sentiment_logits"] if sentiment else []))


def decode_io_names(n_layer: int) -> tuple[list[str], list[str]]:
    """The decode-step graph's inputs and outputs (`model.builder.build_decode`)."""
    kv = [(i, k) for i in range(n_layer) for k in ("key", "value")]
    return (["input_ids", "position_ids", "seqlens_k", "total_sequence_length"]
            + [f"past_key_values.{i}.{k}" for i, k in kv], ["logits"] + [f"present.{i}.{k}" for i, k in kv])


def export_onnx(model: GPT, path: Path, label_ids: list[int], head: ngrams.NgramHead | None = None) -> None:
    onnx.save(build(model, label_ids, head), str(path))
    check_dynamic_axes(path, model.config.n_layer, sentiment=head is not None)


def write_decode(model: GPT, out: Path, int8: bool) -> dict[str, str]:
    """The decode-step graph (and with `int8` its quantised twin) next to model.onnx -> model.json `files` entries."""
    onnx.save(build_decode(model), str(out / "model.decode.onnx"))
    files = {"decode": "model.decode.onnx"}
    if int8:
        quantize_int8(out / "model.decode.onnx", out / "model.decode.int8.onnx")
        files["decode_int8"] = "model.decode.int8.onnx"
    return files


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the MatMul weights (ONNX Attention and GroupQueryAttention stay fp32;
    the quantiser's shape inference does not know the latter's outputs, hence the default type)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def check_dynamic_axes(path: Path, n_layer: int, sentiment: bool = False) -> None:
    """Every batch/sequence/past axis must be symbolic; a fixed number there breaks batching."""
    graph = onnx.load(str(path), load_external_data=False).graph
    inputs, outputs = io_names(n_layer, sentiment)
    dynamic = {"input_ids": (0, 1), "attention_mask": (0, 1), "position_ids": (0, 1), "logits": (0,)}
    dynamic |= {name: (0, 2) for name in inputs[3:] + outputs[1:1 + 2 * n_layer]}
    dynamic |= {"sentiment_logits": (0,)} if sentiment else {}
    found = {v.name: v.type.tensor_type.shape.dim for v in list(graph.input) + list(graph.output)}
    if set(found) != set(inputs) | set(outputs):
        raise ExportError(f"graph inputs/outputs are {sorted(found)}, expected {inputs + outputs}")
    for name, axes in dynamic.items():
        for axis in axes:
            if not found[name][axis].dim_param:
                raise ExportError(f"{name} axis {axis} was fixed to {found[name][axis].dim_value} by the exporter")


@torch.no_grad()
def torch_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    """Greedy continuation with the PyTorch KV cache (prefill once, then one token per step)."""
    logits, past = model(torch.tensor([prompt]))
    out = []
    for _ in range(n):
        out.append(int(logits[0, -1].argmax()))
        logits, past = model(torch.tensor([[out[-1]]]), past_key_values=past)
    return out


@torch.no_grad()
def parity(model: GPT, engine, seed: int = 0, head: ngrams.NgramHead | None = None) -> dict:
    """ONNX (through the Engine) vs PyTorch: padded batch logits, a cached step, greedy continuations, and
    with an n-gram `head` the sentiment scores of padded classification prompts (an empty text among them)."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    lengths = [1, max(1, c.block_size // 4), max(2, c.block_size // 2)]
    prompts = [torch.randint(0, c.vocab_size, (n,), generator=g).tolist() for n in lengths]
    worst = 0.0
    onnx_logits, caches = engine.prefill(prompts)
    nxt = torch.randint(0, c.vocab_size, (len(prompts),), generator=g).tolist()
    step_logits, _ = engine.decode_step(nxt, caches)
    for i, p in enumerate(prompts):
        ref, _ = model(torch.tensor([p + [nxt[i]]]))
        worst = max(worst, float(np.abs(ref[0, -2].numpy() - onnx_logits[i]).max()),
                    float(np.abs(ref[0, -1].numpy() - step_logits[i]).max()))
    if head is not None:
        worst = max(worst, _sentiment_parity(model, engine, head, g))
    if worst > TOLERANCE:
        raise ExportError(f"max |Δlogits| {worst:.2e} > {TOLERANCE:g}")
    n_greedy = min(GREEDY_TOKENS, c.block_size - 8)
    for p in prompts[:2]:
        p = p[:8]
        expected = torch_greedy(model, p, n_greedy)
        logits, caches = engine.prefill([p])
        got = []
        for _ in range(n_greedy):
            got.append(int(logits[0].argmax()))
            logits, caches = engine.decode_step([got[-1]], caches)
        if got != expected:
            raise ExportError(f"greedy continuation differs from PyTorch at token {next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)}")
    return {"max_abs_logit_diff": worst, "greedy_tokens_equal": n_greedy}


def _sentiment_parity(model: GPT, engine, head: ngrams.NgramHead, g: torch.Generator) -> float:
    """Max |Δ| of `sentiment_logits` against PyTorch's label log-softmax + the numpy bag (model/ngrams.py)."""
    sentiment = engine.meta["prompt"]["sentiment_token_id"]
    lengths = [0, 1, 7, model.config.block_size - 1]
    prompts = [torch.randint(0, head.n_text, (n,), generator=g).tolist() + [sentiment] for n in lengths]
    prompts[2][3:5] = prompts[2][:2]  # a repeated bigram: counts above 1 in the L2 norm
    got = engine.label_scores(prompts)
    label_ids = engine.meta["prompt"]["label_token_ids"]
    lm = torch.stack([model(torch.tensor([p]))[0][0, -1, label_ids] for p in prompts])
    ref = torch.log_softmax(lm, dim=-1).double().numpy() + ngrams.log_probs(head, prompts)
    return float(np.abs(ref - got).max())


def write_meta(out: Path, model: GPT, tok: Tokenizer, ckpt: dict, head: ngrams.NgramHead | None, name: str,
               int8: bool, decode_files: dict[str, str]) -> dict:
    c = model.config
    inputs, outputs = io_names(c.n_layer, sentiment=head is not None)
    meta = {
        "name": name,
        "files": {"model": "model.onnx", "int8": "model.int8.onnx" if int8 else None, "tokenizer": "tokenizer.json",
                  **decode_files},
        "architecture": {"type": "nanoGPT", **c.to_dict(), "tied_head": True, "pre_layernorm": True},
        "params": model.num_params(),
        "tokenizer": {"file": "tokenizer.json", "type": "byte-level BPE", "vocab_size": tok.vocab_size},
        "labels": list(LABELS),
        "label_mapping": {str(i): label for i, label in enumerate(LABELS)},
        "prompt": {"format": FORMAT, "sentiment_token": SENTIMENT, "sentiment_token_id": tok.special[SENTIMENT],
                   "label_tokens": list(LABEL_TOKENS), "label_token_ids": label_ids(tok),
                   "lowercase": bool(ckpt["args"].get("lowercase", False))},
        "classifier": {
            "output": "sentiment_logits" if head else "logits",
            "read": ("log-softmax of the label-token logits at <|sentiment|> + log-softmax of a bag of BPE n-grams "
                     "(model/ngrams.py), divided by calibration_temperature" if head else
                     "the label-token logits at <|sentiment|>, divided by calibration_temperature"),
            **({"ngrams": {"features": "token unigrams + hashed adjacent-token bigrams, TF-IDF, L2-normalised",
                           "buckets": head.buckets, "logistic_regression_c": head.c,
                           "params": int(head.weight.size + head.bias.size)}} if head else {}),
        },
        "calibration_temperature": ckpt.get("temperature") or 1.0,
        "eos_id": tok.eot_id,
        "onnx": {"opset": OPSET, "inputs": inputs, "outputs": outputs,
                 "decode": dict(zip(("inputs", "outputs"), decode_io_names(c.n_layer)))},
        "training": {
            "data": {"name": DATA_NAME, "license": DATA_LICENSE, **ckpt["data"],
                     "path": Path(ckpt["data"]["path"]).name,
                     "validation_split": "stratified 10 %, seed 1234 (model.data.split)"},
            "steps": ckpt["step"],
            "args": {k: v for k, v in ckpt["args"].items() if k not in ("data", "out")},
            "tokens_per_s": (ckpt.get("val") or {}).get("tokens_per_s"),
            "device": (ckpt.get("val") or {}).get("device"),
        },
        "metrics": {},
    }
    model_meta.save(out, meta)
    return meta


def export(checkpoint: str | Path, out: str | Path, int8: bool = False, data: str | Path | None = None,
           name: str = "edgewatch-nanogpt") -> dict:
    """Export, self-check, measure; --out is replaced only when every check passed. Returns model.json."""
    from edgewatch.sidecar.engine import Engine

    model, tok, ckpt = load_checkpoint(checkpoint)
    out = Path(out)
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        tmp = Path(tmp)
        head = ngram_head(ckpt)
        export_onnx(model, tmp / "model.onnx", label_ids(tok), head)
        tok.save(tmp / "tokenizer.json")
        meta = write_meta(tmp, model, tok, ckpt, head, name, int8, write_decode(model, tmp, int8))
        engine = Engine(tmp, device="cpu")
        meta["export_check"] = parity(model, engine, head=head)  # prompts on model.onnx, steps on model.decode.onnx
        if int8:
            quantize_int8(tmp / "model.onnx", tmp / "model.int8.onnx")
        data_path = Path(data) if data else Path(ckpt["data"]["path"])
        if data_path.is_file():
            _, val_rows = split(read_labelled(data_path))
            m = evaluate_engine(engine, val_rows)
            meta["metrics"] = {"measured_on": f"validation split of {data_path.name} ({len(val_rows)} rows), ONNX fp32",
                               "val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"],
                               "per_class": m["per_class"], "confusion": m["confusion"]}
            if head:  # each half alone, as training measured them (PyTorch LM, numpy bag)
                val = ckpt["val"]
                meta["metrics"] |= {"lm_alone_val_accuracy": val["accuracy"],
                                    "lm_alone_val_macro_f1": val["macro_f1"],
                                    "ngrams_alone_val_accuracy": val["ngrams_alone"]["accuracy"],
                                    "ngrams_alone_val_macro_f1": val["ngrams_alone"]["macro_f1"]}
            if int8:
                q = evaluate_engine(Engine(tmp, device="cpu", int8=True), val_rows)
                meta["metrics"] |= {"int8_val_accuracy": q["accuracy"], "int8_val_macro_f1": q["macro_f1"],
                                    "int8_accuracy_change": q["accuracy"] - m["accuracy"]}
        else:
            log.warning("no data to measure metrics", data=str(data_path))
        model_meta.save(tmp, meta)
        out.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            shutil.copy2(f, out / f.name)
    log.info("exported", out=str(out), **meta["export_check"], **{k: v for k, v in meta["metrics"].items()
                                                                  if isinstance(v, float)})
    return meta


def export_command(args) -> int:
    meta = export(args.checkpoint, args.out, int8=args.int8, data=args.data, name=args.name)
    print(json.dumps({"out": args.out, **meta["export_check"],
                      **{k: v for k, v in meta["metrics"].items() if isinstance(v, float)}}))
    return 0
