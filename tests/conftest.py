"""Project-wide fixtures: the PostgreSQL server of this machine, the reference data sets (`SHARED_DIR`), a tiny exported model."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from edgewatch.agent.testing.plugin import require

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SHARED_DIR", REPO.parent / "shared"))
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def postgres_url() -> str:
    """A fresh schema on the local PostgreSQL; dropped afterwards."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    try:
        engine = sqlalchemy.create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.exec_driver_sql("select 1")
    except Exception as e:  # noqa: BLE001 - any failure means "not available"
        require("PostgreSQL", False, f"{POSTGRES_URL}: {e}".splitlines()[0])
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"create schema {schema}")
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"drop schema {schema} cascade")
    engine.dispose()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The reference data sets (`$SHARED_DIR/data`), read in place, never copied into the project."""
    path = SHARED / "data"
    require("shared data", path.is_dir(), f"{path} not found (set SHARED_DIR)")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(request, tmp_path_factory) -> Path:
    """A tiny exported model for the sidecar, built once and kept in pytest's cache until the model code changes
    (tests/model has its own, built fresh, since it tests the build)."""
    pytest.importorskip("torch")
    from edgewatch.sidecar.testing import cached_tiny_model

    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    return cached_tiny_model(cache.mkdir("edgewatch-sidecar-tiny") if cache else tmp_path_factory.mktemp("tiny"))
