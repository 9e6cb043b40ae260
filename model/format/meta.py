"""model.json: what an exported model directory says about itself. Export writes it; everyone else reads it.

One reader and one writer, so the file's name, encoding and the error for a directory that is
not an exported model are defined once (the sidecar's engine, the exporter's parity check and
the benchmarks all open models through `load`).
"""

from __future__ import annotations

import json
from pathlib import Path

META_FILE = "model.json"


def load(model_dir: str | Path) -> dict:
    """The model.json of `model_dir`; FileNotFoundError naming the path when there is none."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {META_FILE} (not an exported model directory)")
    return json.loads(path.read_text(encoding="utf-8"))


def save(model_dir: str | Path, meta: dict) -> Path:
    """Write `meta` as `model_dir`/model.json (indented, one trailing newline: the file is read by people too)."""
    path = Path(model_dir) / META_FILE
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path
