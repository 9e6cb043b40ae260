"""A tiny model trained and exported once per session (model.testing.tiny_model)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    pytest.importorskip("torch")
    from edgewatch.model.testing import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny"), int8=True)
