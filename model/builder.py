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
`model.export.parity` checks the numbers against PyTorch.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model.gpt import GPT

OPSET = 23  # ONNX Attention with past/present: onnxruntime >= 1.23


class _Graph:
    """Nodes and initializers, appended in order; names are generated from the op type."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.weights.append(numpy_helper.from_array(np.array(value, order="C"), name))  # keeps 0-d scalars 0-d
        return name

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, **attrs) -> str | list[str]:
        self._n += 1
        names = outputs if isinstance(outputs, list) else [f"{op_type.lower()}_{self._n}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=f"{op_type}_{self._n}", **attrs))
        return names[0] if len(names) == 1 else names


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
    past = g.op("Sub", total, seq)
    zero, step = g.const("zero", np.array(0, np.int64)), "one"
    q_pos = g.op("Unsqueeze", g.op("Range", past, total, step), g.const("axis1", np.array([1], np.int64)))
    k_pos = g.op("Unsqueeze", g.op("Range", zero, total, step), g.const("axis0", np.array([0], np.int64)))
    causal = g.op("LessOrEqual", k_pos, q_pos)  # [S, T]
    real = g.op("Unsqueeze", g.op("Cast", "attention_mask", to=TensorProto.BOOL),
                g.const("axes12", np.array([1, 2], np.int64)))  # [B, 1, 1, T]
    return g.op("Or", g.op("And", causal, real), g.op("Equal", k_pos, q_pos))


def build(model: GPT) -> onnx.ModelProto:
    """The model's graph: inputs/outputs named as `model.export.io_names`, every batch/sequence/past axis symbolic."""
    c = model.config
    head_dim = c.n_embd // c.n_head
    t = model.transformer
    g = _Graph()
    mask = _attention_mask(g)
    wte = g.const("wte", t.wte.weight.detach().numpy())
    x = g.op("Add", g.op("Gather", wte, "input_ids"), g.op("Gather", g.const("wpe", t.wpe.weight.detach().numpy()),
                                                          "position_ids"))  # [B, S, C]
    bsc = g.op("Concat", g.op("Shape", "input_ids"), g.const("minus1", np.array([-1], np.int64)), axis=0)
    x = g.op("Reshape", x, g.const("flat", np.array([-1, c.n_embd], np.int64)))  # [B*S, C]
    for i, block in enumerate(t.h):
        p = f"h.{i}"
        qkv = g.op("Reshape", _linear(g, _layernorm(g, x, f"{p}.ln_1", block.ln_1), f"{p}.attn.c_attn",
                                      block.attn.c_attn.weight, block.attn.c_attn.bias), bsc)
        q, k, v = g.op("Split", qkv, g.const(f"{p}.split", np.array([c.n_embd] * 3, np.int64)), axis=-1, outputs=3)
        y = g.op("Attention", q, k, v, mask, f"past_key_values.{i}.key", f"past_key_values.{i}.value",
                 outputs=[f"attn_{i}", f"present.{i}.key", f"present.{i}.value"],
                 q_num_heads=c.n_head, kv_num_heads=c.n_head, scale=1.0 / float(np.sqrt(head_dim)))[0]
        y = g.op("Reshape", y, "flat")
        x = g.op("Add", x, _linear(g, y, f"{p}.attn.c_proj", block.attn.c_proj.weight, block.attn.c_proj.bias))
        h = _linear(g, _layernorm(g, x, f"{p}.ln_2", block.ln_2), f"{p}.mlp.c_fc", block.mlp.c_fc.weight,
                    block.mlp.c_fc.bias)
        h = g.op("Gelu", h)  # exact (erf) GELU, as nn.GELU()
        x = g.op("Add", x, _linear(g, h, f"{p}.mlp.c_proj", block.mlp.c_proj.weight, block.mlp.c_proj.bias))
    last = g.op("Gather", g.op("Reshape", x, bsc), g.const("minus1_scalar", np.array(-1, np.int64)), axis=1)
    logits = g.op("Gemm", _layernorm(g, last, "ln_f", t.ln_f), wte, transB=1)  # tied head: x @ wte^T
    g.op("Unsqueeze", logits, "axis1", outputs=["logits"])

    def value(name: str, elem: int, dims: list) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, elem, dims)

    kv_past = ["batch_size", c.n_head, "past_sequence_length", head_dim]
    kv_present = ["batch_size", c.n_head, "total_sequence_length", head_dim]
    inputs = [value("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              value("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
              value("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])]
    outputs = [value("logits", TensorProto.FLOAT, ["batch_size", 1, c.vocab_size])]
    for i in range(c.n_layer):
        for kv in ("key", "value"):
            inputs.append(value(f"past_key_values.{i}.{kv}", TensorProto.FLOAT, kv_past))
            outputs.append(value(f"present.{i}.{kv}", TensorProto.FLOAT, kv_present))
    graph = helper.make_graph(g.nodes, "nanogpt", inputs, outputs, g.weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgewatch")
    onnx.checker.check_model(proto)
    return proto
