"""What serving needs from the model: the tokenizer, the prompt format, and where the shipped model lives.

The sidecar imports this subpackage and nothing else of `edgewatch.model`; none of it imports torch.
"""

from pathlib import Path


def shipped_model_dir() -> Path:
    """The exported model that ships inside the package (model.onnx, model.json, tokenizer.json)."""
    return Path(__file__).resolve().parent.parent / "shipped"
