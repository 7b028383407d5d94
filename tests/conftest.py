"""Shared fixtures: stores on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from sqlalchemy import create_engine, text

from store import Store

# Property tests explore the same examples on every run: CI results do not depend on luck.
settings.register_profile("accord", derandomize=True, deadline=None)
settings.load_profile("accord")

POSTGRES_URL = os.environ.get("ACCORD_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def _postgres_store() -> Iterator[Store]:
    schema = f"accord_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # the suite promises PostgreSQL coverage: fail loudly, never skip
        admin.dispose()
        raise RuntimeError(
            f"PostgreSQL at {POSTGRES_URL} is not reachable ({type(exc).__name__}); start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
            "or point ACCORD_TEST_POSTGRES_URL elsewhere"
        ) from exc
    sep = "&" if "?" in POSTGRES_URL else "?"
    store = Store(f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}")
    store.create_all()
    try:
        yield store
    finally:
        store.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Makes fresh, empty stores of one backend (SQLite file, or a PostgreSQL schema of its own)."""
    cleanups: list[Iterator[Store]] = []
    made: list[Store] = []

    def make() -> Store:
        if request.param == "sqlite":
            s = Store(f"sqlite:///{tmp_path / f'accord-{len(made)}.sqlite'}")
            s.create_all()
        else:
            generator = _postgres_store()
            s = next(generator)
            cleanups.append(generator)
        made.append(s)
        return s

    yield make
    for s in made:
        s.dispose()
    for generator in cleanups:
        next(generator, None)


@pytest.fixture
def store(store_factory: Callable[[], Store]) -> Store:
    return store_factory()


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One temporary Prefect API for the whole session (starting one costs ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
