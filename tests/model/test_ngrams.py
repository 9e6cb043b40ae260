"""The bag-of-n-grams head: its features, that it is scikit-learn's TF-IDF + logistic regression, and
that the exported graph computes it (padding, repeated n-grams, empty text, runs with a past)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from edgewatch.model import ngrams

pytest.importorskip("sklearn")
torch = pytest.importorskip("torch")

N_TEXT, SPECIAL = 20, 21  # ids 0..19 are text tokens, 20.. special


def test_features_are_text_unigrams_and_adjacent_text_bigrams():
    f = ngrams.features([3, 4, SPECIAL, 5, 5], N_TEXT, buckets=7)
    assert f[:4] == [3, 4, 5, 5]  # the special token is not a feature
    assert f[4:] == [N_TEXT + (3 * N_TEXT + 4) % 7, N_TEXT + (5 * N_TEXT + 5) % 7]  # no pair across it
    assert ngrams.features([SPECIAL], N_TEXT, 7) == []


def _data(n: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """Label = which of three marker bigrams a random sequence carries."""
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for i in range(n):
        y = i % 3
        seq = rng.integers(6, N_TEXT, rng.integers(2, 9)).tolist()
        pos = int(rng.integers(0, len(seq)))
        seqs.append(seq[:pos] + [2 * y, 2 * y + 1] + seq[pos:] + [SPECIAL])
        labels.append(y)
    return seqs, labels


@pytest.fixture(scope="module")
def head() -> ngrams.NgramHead:
    return ngrams.fit(*_data(300, 0), n_text=N_TEXT, buckets=31)


def test_fit_learns_and_equals_scikit_learn(head):
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import LogisticRegression

    seqs, labels = _data(300, 0)
    test_seqs, test_labels = _data(60, 1)
    assert (ngrams.log_probs(head, test_seqs).argmax(1) == test_labels).mean() >= 0.95
    counts = ngrams._counts(seqs, N_TEXT, 31)
    tfidf = TfidfTransformer().fit(counts)
    lr = LogisticRegression(C=head.c, max_iter=5000).fit(tfidf.transform(counts), labels)
    want = lr.predict_log_proba(tfidf.transform(ngrams._counts(test_seqs, N_TEXT, 31)))
    np.testing.assert_allclose(ngrams.log_probs(head, test_seqs), want, atol=1e-4)


def test_the_graph_computes_the_head(head, tmp_path):
    from edgewatch.model.builder import build
    from edgewatch.model.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=N_TEXT + 5, n_layer=1, n_head=2, n_embd=8, dropout=0.0)).eval()
    labels = [22, 23, 24]
    path = tmp_path / "m.onnx"
    path.write_bytes(build(model, labels, head).SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    prompts = [[SPECIAL], [7, 0, 1, 9, 0, 1, SPECIAL], [3, SPECIAL], [2, 3, 4, 5, 2, 3, SPECIAL]]  # repeats, empty
    L = max(map(len, prompts))
    ids = np.full((len(prompts), L), SPECIAL, np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):], mask[i, L - len(p):] = p, 1  # left padding, as the Engine pads
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    empty = np.zeros((len(prompts), 2, 0, 4), np.float32)
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
             "past_key_values.0.key": empty, "past_key_values.0.value": empty}
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    with torch.no_grad():
        lm = torch.stack([model(torch.tensor([p]))[0][0, -1, labels] for p in prompts])
    want = torch.log_softmax(lm, -1).double().numpy() + ngrams.log_probs(head, prompts)
    np.testing.assert_allclose(out["sentiment_logits"], want, atol=1e-5)
    # a generation step (a past) skips the head: zeros of the right shape
    step = {"input_ids": ids[:, :1], "attention_mask": np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], 1),
            "position_ids": positions[:, -1:] + 1, "past_key_values.0.key": out["present.0.key"],
            "past_key_values.0.value": out["present.0.value"]}
    (scores,) = session.run(["sentiment_logits"], step)
    assert scores.shape == (len(prompts), 3) and not scores.any()
