"""A bag of BPE n-grams read beside the language model: the sentiment head's second opinion.

The LM (model/gpt.py, read off at `<|sentiment|>`) and a linear model over the
text's token unigrams and bigrams are wrong on different tweets, so the
classifier is the sum of their label log-probabilities (docs/model-card.md). The bag
is TF-IDF as scikit-learn computes it (count x smoothed idf, L2-normalised)
under a logistic regression; bigrams of the token ids are hashed into a fixed
number of buckets so the exported graph (model/builder.py) needs nothing but a
table lookup. `log_probs` is the numpy reference the export checks the graph
against. Torch-free; fitting needs scikit-learn (the `train` extra).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BUCKETS = 65521  # bigram hash buckets (a prime); the training tweets hold about 67,000 distinct bigrams
C_GRID = (3.0, 10.0, 30.0)  # inverse L2 strength, chosen by 5-fold cross-validation on the training rows


@dataclass(frozen=True)
class NgramHead:
    """Feature f < n_text: unigram `f`; f >= n_text: bigram bucket f - n_text. Weights [F, 3], idf [F]."""

    n_text: int  # ids below this are text tokens; special tokens (>= n_text) never count
    buckets: int
    weight: np.ndarray
    idf: np.ndarray
    bias: np.ndarray
    c: float


def features(ids: list[int], n_text: int, buckets: int) -> list[int]:
    """The feature index of every text token and every pair of adjacent text tokens."""
    feats = [t for t in ids if t < n_text]
    feats += [n_text + (a * n_text + b) % buckets for a, b in zip(ids, ids[1:]) if a < n_text and b < n_text]
    return feats


def _counts(seqs: list[list[int]], n_text: int, buckets: int):
    from scipy.sparse import csr_matrix

    rows, cols = [], []
    for i, ids in enumerate(seqs):
        f = features(ids, n_text, buckets)
        rows += [i] * len(f)
        cols += f
    return csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(seqs), n_text + buckets))


def fit(seqs: list[list[int]], labels: list[int], n_text: int, buckets: int = BUCKETS,
        seed: int = 0) -> NgramHead:
    """TF-IDF + logistic regression on token-id sequences; C by cross-validation on these rows only."""
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    counts = _counts(seqs, n_text, buckets)
    tfidf = TfidfTransformer().fit(counts)
    x, y = tfidf.transform(counts), np.asarray(labels)
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    c = max(C_GRID, key=lambda c: cross_val_score(LogisticRegression(C=c, max_iter=5000), x, y, cv=folds).mean())
    lr = LogisticRegression(C=c, max_iter=5000).fit(x, y)
    return NgramHead(n_text, buckets, lr.coef_.T.astype(np.float32), tfidf.idf_.astype(np.float32),
                     lr.intercept_.astype(np.float32), c)


def log_probs(head: NgramHead, seqs: list[list[int]]) -> np.ndarray:
    """[B, 3] label log-probabilities of the bag, as the exported graph computes them."""
    out = np.empty((len(seqs), head.weight.shape[1]))
    for i, ids in enumerate(seqs):
        f = np.asarray(features(ids, head.n_text, head.buckets), dtype=np.int64)
        x = np.zeros(head.weight.shape[0])
        np.add.at(x, f, head.idf[f].astype(np.float64))
        z = x @ head.weight / max(np.linalg.norm(x), 1e-12) + head.bias
        out[i] = z - z.max() - np.log(np.exp(z - z.max()).sum())
    return out
