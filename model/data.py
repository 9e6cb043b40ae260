"""Labelled text CSV (docs/reference/commands.md: columns text,label; 0 bearish, 1 bullish, 2 neutral) and the fixed validation split.

Torch-free so evaluation and the tests can rebuild the exact split the shipped model never saw.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from edgewatch.model.format.prompt import LABELS

SPLIT_SEED = 1234  # fixed independently of the training seed: the validation rows never change
VAL_FRACTION = 0.1


class DataError(ValueError):
    """The CSV cannot be used; the message names the file and the row."""


def read_labelled(path: str | Path) -> list[tuple[str, int]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path}: needs columns text,label (found {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            label = (row["label"] or "").strip()
            if label not in {str(i) for i in range(len(LABELS))}:
                raise DataError(f"{path}:{line}: label {label!r} is not 0, 1 or 2")
            rows.append((row["text"] or "", int(label)))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def split(rows: list[tuple[str, int]], fraction: float = VAL_FRACTION,
          seed: int = SPLIT_SEED) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Stratified seeded split -> (train, validation); each class gives `fraction` of its rows."""
    rng = random.Random(seed)
    train, val = [], []
    for label in range(len(LABELS)):
        idx = [i for i, (_, y) in enumerate(rows) if y == label]
        rng.shuffle(idx)
        n_val = round(len(idx) * fraction)
        val += idx[:n_val]
        train += idx[n_val:]
    return [rows[i] for i in sorted(train)], [rows[i] for i in sorted(val)]
