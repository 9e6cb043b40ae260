"""The GPT as an ONNX graph written node by node from its weights, as onnxruntime-genai's model builder does.

A traced export (torch.onnx) keeps PyTorch's view/transpose/concat bookkeeping:
132 nodes, about a third of them moving bytes, and at batch 1 ONNX Runtime's
cost is per node, not per FLOP. Here each block is the handful of operators it
needs on a flat [batch * seq, n_embd] residual stream (LayerNormalization,
MatMul + Add, which ONNX Runtime fuses into Gemm, Gelu) and one ONNX
`Attention` (opset 23) that takes Q, K, V as [batch, seq, n_embd], splits the
heads itself and appends them to the past keys/values. The attention mask
(causal AND not padding, each query always seeing itself) is computed once and
shared by every layer. The head runs on each row's last position only, as
nanoGPT's inference forward does: `logits` is [batch, 1, vocab], the
next-token distribution that generation samples and classification reads (on a
30-token tweet the head over every position was a quarter of the FLOPs). Inputs,
outputs and dynamic axes as `model.export.io_names` describes;
`model.export.parity` checks the numbers against PyTorch. A model with the
bag-of-n-grams head (model/ngrams.py) also outputs `sentiment_logits`, the
classifier's scores, computed inside an `If` on runs with an empty past.

`build_decode` writes the second graph a model ships: the same blocks for one
token per row against fixed-size key/value buffers updated in place, which the
sidecar runs for every generation step on the CPU (prompts and classification
run the graph above).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from edgewatch.model.gpt import GPT
from edgewatch.model.ngrams import NgramHead
from onnx import TensorProto, helper, numpy_helper

OPSET = 23  # ONNX Attention with past/present: onnxruntime >= 1.23


class _Graph:
    """Nodes and initializers, appended in order; names are generated from the op type."""

    def __init__(self, parent: "_Graph | None" = None):
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = parent.weights if parent else []  # a branch's live in the main graph
        self._count = parent._count if parent else itertools.count(1)

    def const(self, name: str, value: np.ndarray) -> str:
        self.weights.append(numpy_helper.from_array(np.array(value, order="C"), name))  # keeps 0-d scalars 0-d
        return name

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, **attrs) -> str | list[str]:
        n = next(self._count)
        names = outputs if isinstance(outputs, list) else [f"{op_type.lower()}_{n}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=f"{op_type}_{n}", **attrs))
        return names[0] if len(names) == 1 else names

    def subgraph(self, name: str, output: str) -> onnx.GraphProto:
        """This branch's nodes as the body of an `If` (outer-scope names and initializers stay visible)."""
        return helper.make_graph(self.nodes, name, [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)])


def _linear(g: _Graph, x: str, prefix: str, weight, bias) -> str:
    """x [N, in] @ W^T + b, as MatMul + Add (quantize_dynamic reads MatMul; the CPU provider fuses Gemm)."""
    y = g.op("MatMul", x, g.const(f"{prefix}.weight_t", weight.detach().numpy().T))
    return g.op("Add", y, g.const(f"{prefix}.bias", bias.detach().numpy())) if bias is not None else y


def _layernorm(g: _Graph, x: str, prefix: str, ln) -> str:
    bias = ln.bias.detach().numpy() if ln.bias is not None else np.zeros_like(ln.weight.detach().numpy())
    return g.op("LayerNormalization", x, g.const(f"{prefix}.weight", ln.weight.detach().numpy()),
                g.const(f"{prefix}.bias", bias), axis=-1, epsilon=ln.eps)


def _attention_mask(g: _Graph) -> str:
    """attention_mask [B, past+S] -> boolean [B, 1, S, past+S]: causal AND real token, OR the diagonal."""
    total = g.op("Gather", g.op("Shape", "attention_mask"), g.const("one", np.array(1, np.int64)), axis=0)
    seq = g.op("Gather", g.op("Shape", "input_ids"), "one", axis=0)
    past = g.op("Sub", total, seq, outputs=["past_length"])  # also the sentiment head's condition
    zero, step = g.const("zero", np.array(0, np.int64)), "one"
    q_pos = g.op("Unsqueeze", g.op("Range", past, total, step), g.const("axis1", np.array([1], np.int64)))
    k_pos = g.op("Unsqueeze", g.op("Range", zero, total, step), g.const("axis0", np.array([0], np.int64)))
    causal = g.op("LessOrEqual", k_pos, q_pos)  # [S, T]
    real = g.op("Unsqueeze", g.op("Cast", "attention_mask", to=TensorProto.BOOL),
                g.const("axes12", np.array([1, 2], np.int64)))  # [B, 1, 1, T]
    return g.op("Or", g.op("And", causal, real), g.op("Equal", k_pos, q_pos))


def _sentiment(main: _Graph, logits: str, label_ids: list[int], head: NgramHead) -> None:
    """`sentiment_logits` [B, 3]: log-softmax of the LM's label logits + the n-gram bag's (model/ngrams.py).

    Computed on a run with an empty past (a classification prompt run whole, ending in `<|sentiment|>`;
    the bag reads the text tokens of `input_ids`, padding excluded by the mask); zeros on a run with a
    past. The `If` keeps the bag's ~30 nodes off every generation step (ONNX Runtime runs the whole
    graph whatever outputs are fetched).
    """
    g = _Graph(main)
    zero, one, last, end = (g.const(f"{name}_1d", np.array([v], np.int64))
                            for name, v in (("zero", 0), ("one", 1), ("minus1", -1), ("end", 2**62)))
    axis1 = "axis1"
    seq = g.op("Unsqueeze", g.op("Gather", g.op("Shape", "input_ids"), "one", axis=0), "axis0")
    mask = g.op("Slice", "attention_mask", g.op("Neg", seq), end, axis1)  # this run's tokens [B, S]
    text = g.op("And", g.op("Less", "input_ids", g.const("n_text", np.array(head.n_text, np.int64))),
                g.op("Cast", mask, to=TensorProto.BOOL))
    ids = g.op("Where", text, "input_ids", "zero")
    prev, cur = g.op("Slice", ids, zero, last, axis1), g.op("Slice", ids, one, end, axis1)
    pair = g.op("Add", g.op("Mul", prev, "n_text"), cur)
    bigram = g.op("Add", g.op("Mod", pair, g.const("buckets", np.array(head.buckets, np.int64))), "n_text")
    pair_text = g.op("And", g.op("Slice", text, zero, last, axis1), g.op("Slice", text, one, end, axis1))
    feats = g.op("Concat", ids, bigram, axis=1)  # [B, N]
    valid = g.op("Cast", g.op("Concat", text, pair_text, axis=1), to=TensorProto.FLOAT)
    idf = g.op("Unsqueeze", g.op("Mul", g.op("Gather", g.const("ngram.idf", head.idf), feats), valid), "axis1")
    num = g.op("MatMul", idf, g.op("Gather", g.const("ngram.weight", head.weight), feats))  # [B, 1, 3]
    same = g.op("Cast", g.op("Equal", g.op("Unsqueeze", feats, g.const("axis2", np.array([2], np.int64))),
                             g.op("Unsqueeze", feats, "axis1")), to=TensorProto.FLOAT)  # [B, N, N]
    norm2 = g.op("MatMul", g.op("MatMul", idf, same), g.op("Transpose", idf, perm=[0, 2, 1]))  # [B, 1, 1]
    norm = g.op("Max", g.op("Sqrt", norm2), g.const("tiny", np.array(1e-12, np.float32)))
    bag = g.op("Add", g.op("Squeeze", g.op("Div", num, norm), "axis1"), g.const("ngram.bias", head.bias))
    lm = g.op("Gather", logits, g.const("label_ids", np.array(label_ids, np.int64)), axis=1)
    g.op("Add", g.op("LogSoftmax", lm, axis=-1), g.op("LogSoftmax", bag, axis=-1), outputs=["sentiment_scored"])
    skip = _Graph(main)
    shape = skip.op("Concat", skip.op("Slice", skip.op("Shape", "input_ids"), zero, one),
                    g.const("n_labels_1d", np.array([len(label_ids)], np.int64)), axis=0)  # [B, 3]
    skip.op("ConstantOfShape", shape, value=numpy_helper.from_array(np.zeros(1, np.float32)),
            outputs=["sentiment_skipped"])
    first = main.op("Equal", "past_length", "zero")
    main.op("If", first, then_branch=g.subgraph("scored", "sentiment_scored"),
            else_branch=skip.subgraph("skipped", "sentiment_skipped"), outputs=["sentiment_logits"])


def _embed(g: _Graph, t) -> str:
    """Token + position embeddings as the flat [B*S, C] residual stream."""
    wte = g.const("wte", t.wte.weight.detach().numpy())
    x = g.op("Add", g.op("Gather", wte, "input_ids"), g.op("Gather", g.const("wpe", t.wpe.weight.detach().numpy()),
                                                          "position_ids"))  # [B, S, C]
    return g.op("Reshape", x, g.const("flat", np.array([-1, t.wte.weight.shape[1]], np.int64)))


def _blocks(g: _Graph, model: GPT, x: str, bsc: str, attend) -> str:
    """The transformer blocks on the flat stream; `attend(i, qkv)` maps layer i's [B, S, 3C] projections (`bsc`:
    the [B, S, -1] shape to unflatten them) to [B, S, C]."""
    for i, block in enumerate(model.transformer.h):
        p = f"h.{i}"
        qkv = g.op("Reshape", _linear(g, _layernorm(g, x, f"{p}.ln_1", block.ln_1), f"{p}.attn.c_attn",
                                      block.attn.c_attn.weight, block.attn.c_attn.bias), bsc)
        y = g.op("Reshape", attend(i, qkv), "flat")
        x = g.op("Add", x, _linear(g, y, f"{p}.attn.c_proj", block.attn.c_proj.weight, block.attn.c_proj.bias))
        h = _linear(g, _layernorm(g, x, f"{p}.ln_2", block.ln_2), f"{p}.mlp.c_fc", block.mlp.c_fc.weight,
                    block.mlp.c_fc.bias)
        h = g.op("Gelu", h)  # exact (erf) GELU, as nn.GELU()
        x = g.op("Add", x, _linear(g, h, f"{p}.mlp.c_proj", block.mlp.c_proj.weight, block.mlp.c_proj.bias))
    return x


def _head(g: _Graph, model: GPT, last: str) -> str:
    """`logits` [B, 1, vocab] from each row's last position [B, C] (the tied head: x @ wte^T)."""
    logits = g.op("Gemm", _layernorm(g, last, "ln_f", model.transformer.ln_f), "wte", transB=1)
    g.op("Unsqueeze", logits, g.const("logits_axis", np.array([1], np.int64)), outputs=["logits"])
    return logits


def _value(name: str, elem: int, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, dims)


def _scale(c) -> float:
    return 1.0 / float(np.sqrt(c.n_embd // c.n_head))


def _model(g: _Graph, name: str, inputs: list, outputs: list, *domains: str) -> onnx.ModelProto:
    """The checked model of graph `g`, with ONNX's opset and the named operator domains' (version 1)."""
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, 1) for d in domains]
    proto = helper.make_model(helper.make_graph(g.nodes, name, inputs, outputs, g.weights), opset_imports=opsets,
                              producer_name="edgewatch")
    onnx.checker.check_model(proto)
    return proto


def _kv(c, inputs: list, outputs: list, past_axis: str, present_axis: str) -> None:
    head_dim = c.n_embd // c.n_head
    for i in range(c.n_layer):
        for kv in ("key", "value"):
            inputs.append(_value(f"past_key_values.{i}.{kv}", TensorProto.FLOAT, ["batch_size", c.n_head, past_axis,
                                                                                  head_dim]))
            outputs.append(_value(f"present.{i}.{kv}", TensorProto.FLOAT, ["batch_size", c.n_head, present_axis,
                                                                           head_dim]))


def build(model: GPT, label_ids: list[int] | None = None, head: NgramHead | None = None) -> onnx.ModelProto:
    """The model's graph: inputs/outputs named as `model.export.io_names`, every batch/sequence/past axis symbolic.

    With an n-gram `head` (and the `label_ids` it scores) the graph also outputs `sentiment_logits`.
    """
    c = model.config
    g = _Graph()
    mask = _attention_mask(g)
    x = _embed(g, model.transformer)
    bsc = g.op("Concat", g.op("Shape", "input_ids"), g.const("minus1", np.array([-1], np.int64)), axis=0)

    def attend(i: int, qkv: str) -> str:
        q, k, v = g.op("Split", qkv, g.const(f"h.{i}.split", np.array([c.n_embd] * 3, np.int64)), axis=-1, outputs=3)
        return g.op("Attention", q, k, v, mask, f"past_key_values.{i}.key", f"past_key_values.{i}.value",
                    outputs=[f"attn_{i}", f"present.{i}.key", f"present.{i}.value"],
                    q_num_heads=c.n_head, kv_num_heads=c.n_head, scale=_scale(c))[0]

    x = _blocks(g, model, x, bsc, attend)
    logits = _head(g, model, g.op("Gather", g.op("Reshape", x, bsc), g.const("minus1_scalar", np.array(-1, np.int64)),
                                  axis=1))
    if head is not None:
        _sentiment(g, logits, label_ids, head)
    inputs = [_value("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              _value("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
              _value("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])]
    outputs = [_value("logits", TensorProto.FLOAT, ["batch_size", 1, c.vocab_size])]
    _kv(c, inputs, outputs, "past_sequence_length", "total_sequence_length")
    if head is not None:  # last, so `logits` + presents keep their places for readers that do not know it
        outputs.append(_value("sentiment_logits", TensorProto.FLOAT, ["batch_size", len(label_ids)]))
    return _model(g, "nanogpt", inputs, outputs)


def build_decode(model: GPT) -> onnx.ModelProto:
    """The decode-step graph: one new token per row against keys/values in fixed buffers, as
    onnxruntime-genai runs a model on the CPU.

    Past and present are [B, n_head, block_size, head_dim] buffers that the caller binds to the same
    memory: `GroupQueryAttention` (com.microsoft; query/key/value packed, as the projection makes them)
    writes each row's new key and value at position `seqlens_k[b]` in place and attends to positions
    0..seqlens_k[b], so rows of different lengths need no mask and nothing is copied between steps
    (the general graph's Attention returns a new, longer present every step, and its mask costs 15
    kernels). One token a row: `input_ids` [B, 1]; `position_ids` is each row's length,
    `total_sequence_length` the longest row's + 1. No sentiment head: a decode step never classifies.
    Inputs/outputs as `model.export.decode_io_names`.
    """
    c = model.config
    g = _Graph()
    x = _embed(g, model.transformer)  # [B, C]: one position a row, so the stream is the last positions already
    b1c = g.const("b1c", np.array([-1, 1, 3 * c.n_embd], np.int64))

    def attend(i: int, qkv: str) -> str:
        return g.op("GroupQueryAttention", qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value",
                    "seqlens_k", "total_sequence_length", domain="com.microsoft",
                    outputs=[f"attn_{i}", f"present.{i}.key", f"present.{i}.value"],
                    num_heads=c.n_head, kv_num_heads=c.n_head, scale=_scale(c))[0]

    _head(g, model, _blocks(g, model, x, b1c, attend))
    inputs = [_value("input_ids", TensorProto.INT64, ["batch_size", 1]),
              _value("position_ids", TensorProto.INT64, ["batch_size", 1]),
              _value("seqlens_k", TensorProto.INT32, ["batch_size"]),
              _value("total_sequence_length", TensorProto.INT32, [])]
    outputs = [_value("logits", TensorProto.FLOAT, ["batch_size", 1, c.vocab_size])]
    _kv(c, inputs, outputs, "max_sequence_length", "max_sequence_length")
    return _model(g, "nanogpt_decode", inputs, outputs, "com.microsoft")
