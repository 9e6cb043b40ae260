"""The PyTorch GPT: shapes, causality, the KV cache and padding masks, and that training learns."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from edgewatch.model.gpt import GPT, GPTConfig  # noqa: E402

CONFIG = GPTConfig(block_size=32, vocab_size=50, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


def test_shapes_and_tied_head(model):
    logits, presents = model(torch.randint(0, 50, (3, 7)))
    assert logits.shape == (3, 7, 50)
    assert len(presents) == 2 and presents[0][0].shape == (3, 2, 7, 8)
    assert model.lm_head.weight is model.transformer.wte.weight


@torch.no_grad()
def test_last_only_is_the_last_position_of_the_full_logits(model):
    x = torch.randint(0, 50, (2, 9))
    full, _ = model(x)
    last, _ = model(x, last_only=True)
    assert last.shape == (2, 1, 50)
    torch.testing.assert_close(last[:, 0], full[:, -1])


@torch.no_grad()
def test_future_tokens_do_not_change_past_logits(model):
    x = torch.randint(0, 50, (1, 10))
    y = x.clone()
    y[0, 6:] = (y[0, 6:] + 1) % 50
    a, _ = model(x)
    b, _ = model(y)
    torch.testing.assert_close(a[0, :6], b[0, :6])
    assert not torch.allclose(a[0, 6:], b[0, 6:])


@torch.no_grad()
def test_incremental_equals_full(model):
    x = torch.randint(0, 50, (2, 12))
    full, _ = model(x)
    logits, past = model(x[:, :5])  # a prompt, then a 3-token chunk after a past (explicit causal mask), then singles
    steps = [logits]
    logits, past = model(x[:, 5:8], past_key_values=past)
    steps.append(logits)
    for t in range(8, 12):
        logits, past = model(x[:, t:t + 1], past_key_values=past)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_left_padding_with_mask_equals_unpadded(model):
    a, b = torch.randint(0, 50, (1, 9)), torch.randint(0, 50, (1, 4))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], dim=1)])
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :5] = 0
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    logits, _ = model(ids, attention_mask=mask, position_ids=pos)
    assert not torch.isnan(logits).any()
    torch.testing.assert_close(logits[0], model(a)[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1, 5:], model(b)[0][0], atol=1e-5, rtol=1e-5)


def test_training_steps_lower_the_loss(tmp_path):
    from edgewatch.model.testing import tiny_csv, train_args
    from edgewatch.model.train import train

    data = tiny_csv(tmp_path / "t.csv")
    ckpt = torch.load(train(train_args(data, tmp_path / "a", max_steps=1, eval_every=1)), weights_only=False)
    first = ckpt["val"]["loss"]
    ckpt = torch.load(train(train_args(data, tmp_path / "b", max_steps=30, eval_every=30)), weights_only=False)
    assert ckpt["val"]["loss"] < first
    assert ckpt["temperature"] > 0


def test_training_is_deterministic_and_resumes(tmp_path):
    from edgewatch.model.testing import tiny_csv, train_args
    from edgewatch.model.train import train

    data = tiny_csv(tmp_path / "t.csv")
    straight = torch.load(train(train_args(data, tmp_path / "s", max_steps=12, eval_every=6)), weights_only=False)
    train(train_args(data, tmp_path / "r", max_steps=12, stop_after=6, eval_every=6))
    # the checkpoint's own text preparation wins over the command line's (lower-cased here)
    resumed = torch.load(train(train_args(data, tmp_path / "r", max_steps=12, eval_every=6, resume=True,
                                          lowercase=False)), weights_only=False)
    assert resumed["step"] == 12
    for k, v in straight["model"].items():
        torch.testing.assert_close(resumed["model"][k], v)


@torch.no_grad()
def test_pretraining_loss_ignores_the_labels():
    """--pretrain-epochs: the language-model loss alone, so the labels cannot change it."""
    from edgewatch.model.format.prompt import SPECIAL_TOKENS, training_ids
    from edgewatch.model.format.tokenizer import Tokenizer
    from edgewatch.model.testing import train_args
    from edgewatch.model.train import batch_loss

    texts = ["$ACME upgraded to Buy", "Initech shares fall after weak guidance", "Hooli to present"]
    tok = Tokenizer.train(texts, 300, SPECIAL_TOKENS)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, dropout=0.0))
    seqs = [training_ids(tok, t, 0, 32) for t in texts]
    args = train_args("unused.csv", "unused", token_noise=0.0)
    a, b = torch.tensor([0, 1, 2]), torch.tensor([2, 2, 0])
    device = torch.device("cpu")
    assert batch_loss(model, seqs, tok, a, args, device, pretrain=True)[0] == \
        batch_loss(model, seqs, tok, b, args, device, pretrain=True)[0]
    assert batch_loss(model, seqs, tok, a, args, device)[0] != batch_loss(model, seqs, tok, b, args, device)[0]
