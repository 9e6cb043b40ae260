"""The graph written from the weights: what it contains, and that it computes what the PyTorch GPT does."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from edgewatch.model.builder import build  # noqa: E402
from edgewatch.model.gpt import GPT, GPTConfig  # noqa: E402


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=32, vocab_size=50, n_layer=2, n_head=2, n_embd=16, dropout=0.0)).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:  # LayerNorm and bias vectors away from their 1 / 0 init, so each is exercised
                p.normal_(0, 0.3)
    return m


def test_each_block_is_a_handful_of_operators(model):
    ops = Counter(n.op_type for n in build(model).graph.node)
    assert ops["Attention"] == 2 and ops["Gelu"] == 2 and ops["LayerNormalization"] == 2 * 2 + 1
    assert ops["Transpose"] == 0  # the heads are split inside Attention
    assert ops["LessOrEqual"] == 1  # one mask for every layer
    deeper = GPT(GPTConfig(**{**model.config.to_dict(), "n_layer": 3}))
    # a block: 2 LayerNorm, 4 MatMul + 4 bias Add, 2 Reshape, Split, Attention, Gelu, 2 residual Add
    assert len(build(deeper).graph.node) - sum(ops.values()) == 17


def test_matches_pytorch_with_padding_and_past(model, tmp_path):
    c = model.config
    path = tmp_path / "m.onnx"
    path.write_bytes(build(model).SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    ids = rng.integers(0, c.vocab_size, (3, 7))
    mask = np.ones((3, 7), np.int64)
    mask[1, :3] = 0  # left padding
    mask[2, :6] = 0  # a one-token prompt
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    empty = np.zeros((3, c.n_head, 0, c.n_embd // c.n_head), np.float32)
    past_names = [f"past_key_values.{i}.{k}" for i in range(c.n_layer) for k in ("key", "value")]
    out = session.run(None, {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                             **dict.fromkeys(past_names, empty)})
    with torch.no_grad():
        ref, presents = model(torch.tensor(ids), torch.tensor(mask), torch.tensor(positions))
    assert out[0].shape == (3, 1, c.vocab_size)  # the last position only
    np.testing.assert_allclose(out[0][:, 0], ref[:, -1].numpy(), atol=1e-5)
    np.testing.assert_allclose(out[1], presents[0][0].numpy(), atol=1e-5)
    # one cached step on top of that past
    step_ids = rng.integers(0, c.vocab_size, (3, 1))
    step_mask = np.concatenate([mask, np.ones((3, 1), np.int64)], 1)
    step_pos = mask.sum(1, keepdims=True)
    step = session.run(None, {"input_ids": step_ids, "attention_mask": step_mask, "position_ids": step_pos,
                              **dict(zip(past_names, out[1:]))})
    with torch.no_grad():
        ref_step, _ = model(torch.tensor(step_ids), torch.tensor(step_mask), torch.tensor(step_pos), presents)
    np.testing.assert_allclose(step[0][:, 0], ref_step[:, -1].numpy(), atol=1e-5)
