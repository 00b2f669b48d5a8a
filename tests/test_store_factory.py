"""The store factory: picks a backend by name, builds it once, closes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from actors.stores import MemoryStore, SqliteStore, Store, StoreError, StoreFactory
from actors.stores import factory as factory_module


async def test_memory_backend_builds_a_memory_store_once(tmp_path: Path) -> None:
    factory = StoreFactory("memory", tmp_path)
    first = await factory.get()
    try:
        assert isinstance(first, MemoryStore)
        assert await factory.get() is first
    finally:
        await factory.aclose()


async def test_sqlite_backend_opens_troupe_db_in_a_created_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    factory = StoreFactory("sqlite", data_dir)
    store = await factory.get()
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == data_dir / "troupe.db"
        assert (data_dir / "troupe.db").is_file()
        assert await factory.get() is store
        await store.ping()
    finally:
        await factory.aclose()


async def test_unknown_backend_names_the_bad_value_and_the_valid_ones(tmp_path: Path) -> None:
    factory = StoreFactory("postgres", tmp_path)
    with pytest.raises(StoreError) as raised:
        await factory.get()
    assert str(raised.value) == "unknown store backend 'postgres': expected one of memory, sqlite"


async def test_an_unavailable_sqlite_backend_fails_clearly(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    await trio.Path(not_a_dir).write_text("occupied")
    factory = StoreFactory("sqlite", not_a_dir)
    with pytest.raises(StoreError, match="cannot create data directory"):
        await factory.get()


async def test_concurrent_first_calls_build_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[Path] = []

    async def build_slowly(data_dir: Path) -> Store:
        builds.append(data_dir)
        # Yield several times so that the other callers arrive mid-build.
        for _ in range(5):
            await trio.lowlevel.checkpoint()
        return MemoryStore()

    monkeypatch.setitem(factory_module.BACKENDS, "slow", build_slowly)
    factory = StoreFactory("slow", tmp_path)
    got: list[Store] = []

    async def get() -> None:
        got.append(await factory.get())

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(get)

    assert builds == [tmp_path]
    assert len(got) == 20
    assert all(store is got[0] for store in got)
    await factory.aclose()


async def test_a_failed_build_is_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[int] = []

    async def flaky(data_dir: Path) -> Store:
        await trio.lowlevel.checkpoint()
        attempts.append(1)
        if len(attempts) == 1:
            raise StoreError("backend unreachable")
        return MemoryStore()

    monkeypatch.setitem(factory_module.BACKENDS, "flaky", flaky)
    factory = StoreFactory("flaky", tmp_path)
    with pytest.raises(StoreError, match="unreachable"):
        await factory.get()
    assert isinstance(await factory.get(), MemoryStore)
    assert len(attempts) == 2
    await factory.aclose()


async def test_aclose_closes_the_cached_store_and_the_factory(tmp_path: Path) -> None:
    factory = StoreFactory("sqlite", tmp_path / "data")
    store = await factory.get()

    await factory.aclose()
    await factory.aclose()

    with pytest.raises(StoreError, match="closed"):
        await store.ping()
    with pytest.raises(StoreError, match="factory is closed"):
        await factory.get()


async def test_aclose_before_any_get_is_harmless(tmp_path: Path) -> None:
    factory = StoreFactory("memory", tmp_path)
    await factory.aclose()
    with pytest.raises(StoreError, match="factory is closed"):
        await factory.get()
