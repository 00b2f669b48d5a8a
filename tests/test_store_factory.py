"""The store factory: picks a backend by name, builds it once, closes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.config import ServiceConfig, StoreName, load_config
from actors.stores import MemoryStore, RedisStore, SqliteStore, Store, StoreError, StoreFactory
from actors.stores import factory as factory_module
from tests.redis_server import RedisServer, fresh_prefix


def factory_of(store: StoreName, data_dir: Path, **settings: Any) -> StoreFactory:
    return StoreFactory(ServiceConfig(store=store, data_dir=data_dir, **settings))


async def test_memory_backend_builds_a_memory_store_once(tmp_path: Path) -> None:
    factory = factory_of("memory", tmp_path)
    first = await factory.get()
    try:
        assert isinstance(first, MemoryStore)
        assert await factory.get() is first
    finally:
        await factory.aclose()


async def test_sqlite_backend_opens_troupe_db_in_a_created_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    factory = factory_of("sqlite", data_dir)
    store = await factory.get()
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == data_dir / "troupe.db"
        assert (data_dir / "troupe.db").is_file()
        assert await factory.get() is store
        await store.ping()
    finally:
        await factory.aclose()


async def test_redis_backend_opens_a_store_on_the_configured_server(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    factory = factory_of("redis", tmp_path, redis_url=redis_server.url, redis_prefix=fresh_prefix())
    store = await factory.get()
    try:
        assert isinstance(store, RedisStore)
        assert await factory.get() is store
        await store.ping()
    finally:
        await factory.aclose()


async def test_an_unreachable_redis_backend_fails_clearly_and_hides_the_password(
    tmp_path: Path,
) -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    url = f"redis://:hunter2@127.0.0.1:{closed_port}/0"
    factory = factory_of("redis", tmp_path, redis_url=url, redis_connect_timeout=1.0)
    with pytest.raises(StoreError) as raised:
        await factory.get()
    assert f"127.0.0.1:{closed_port}" in str(raised.value)
    assert "hunter2" not in repr(raised.value)
    await factory.aclose()


def test_only_the_redis_backend_loads_coredis() -> None:
    code = "import sys, actors.service, actors.stores; print('coredis' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert loaded.split() == ["False"]


async def test_a_backend_missing_from_the_table_names_the_valid_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(factory_module.BACKENDS, "redis")
    factory = factory_of("redis", tmp_path)
    with pytest.raises(StoreError) as raised:
        await factory.get()
    assert str(raised.value) == "unknown store backend 'redis': expected one of memory, sqlite"


async def test_an_unavailable_sqlite_backend_fails_clearly(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    await trio.Path(not_a_dir).write_text("occupied")
    factory = factory_of("sqlite", not_a_dir)
    with pytest.raises(StoreError, match="cannot create data directory"):
        await factory.get()


async def test_concurrent_first_calls_build_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[Path] = []

    async def build_slowly(config: ServiceConfig) -> Store:
        builds.append(config.data_dir)
        # Yield several times so that the other callers arrive mid-build.
        for _ in range(5):
            await trio.lowlevel.checkpoint()
        return MemoryStore()

    monkeypatch.setitem(factory_module.BACKENDS, "memory", build_slowly)
    factory = factory_of("memory", tmp_path)
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

    async def flaky(config: ServiceConfig) -> Store:
        await trio.lowlevel.checkpoint()
        attempts.append(1)
        if len(attempts) == 1:
            raise StoreError("backend unreachable")
        return MemoryStore()

    monkeypatch.setitem(factory_module.BACKENDS, "memory", flaky)
    factory = factory_of("memory", tmp_path)
    with pytest.raises(StoreError, match="unreachable"):
        await factory.get()
    assert isinstance(await factory.get(), MemoryStore)
    assert len(attempts) == 2
    await factory.aclose()


async def test_aclose_closes_the_cached_store_and_the_factory(tmp_path: Path) -> None:
    factory = factory_of("sqlite", tmp_path / "data")
    store = await factory.get()

    await factory.aclose()
    await factory.aclose()

    with pytest.raises(StoreError, match="closed"):
        await store.ping()
    with pytest.raises(StoreError, match="factory is closed"):
        await factory.get()


async def test_aclose_before_any_get_is_harmless(tmp_path: Path) -> None:
    factory = factory_of("memory", tmp_path)
    await factory.aclose()
    with pytest.raises(StoreError, match="factory is closed"):
        await factory.get()


async def test_the_redis_backend_follows_as_many_jobs_live_as_configured(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    config = load_config(
        env={
            "TROUPE_STORE": "redis",
            "TROUPE_REDIS_URL": redis_server.url,
            "TROUPE_REDIS_PREFIX": fresh_prefix(),
            "TROUPE_REDIS_MAX_LIVE_JOBS": "7",
            "TROUPE_DATA_DIR": str(tmp_path),
        }
    )
    assert config.redis_max_live_jobs == 7
    assert ServiceConfig().redis_max_live_jobs == 10_000
    factory = StoreFactory(config)
    store = await factory.get()
    try:
        assert isinstance(store, RedisStore)
        assert store._max_live_jobs == 7
    finally:
        await factory.aclose()
