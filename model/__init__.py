"""The nanoGPT text model: tokenizer, prompt format, training, export, evaluation.

Importing this package (and its torch-free modules tokenizer, prompt, data,
evaluate) never imports torch: the sidecar uses them with onnxruntime alone.
"""

from pathlib import Path


def shipped_model_dir() -> Path:
    """The exported model that ships inside the package (model.onnx, model.json, tokenizer.json)."""
    return Path(__file__).resolve().parent / "shipped"
