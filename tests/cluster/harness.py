"""Several troupe processes on one Redis, with nginx in front if asked, for tests.

:func:`open_cluster` starts a ``redis-server`` of its own, ``examples/server.py``
processes (nodes ``a``, ``b``, ...) sharing it, and, with ``nginx=True``, nginx
serving the shipped ``examples/nginx.conf`` in front of exactly three nodes. All
listen on free ports of 127.0.0.1 and log into the test's directory::

    async with FakeUpstream.serve() as fake, open_cluster(tmp_path, fake.base_url) as cluster:
        async with cluster.client("a") as a, cluster.client(FRONT) as front:
            created = await front.post("/v1/jobs", json=chat_body())
            cluster.serving(created).kill()       # SIGKILL the node that answered

Every process is killed when the block ends, and a node that died without the
test killing it fails the test. :func:`follow` records a job's event stream,
connection after connection, in a :class:`Followed`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import jwt
import orjson
import pytest
import trio

from tests.redis_server import RedisServer

__all__ = [
    "FRONT",
    "LEASE_PERIOD",
    "Cluster",
    "Connection",
    "Followed",
    "Node",
    "chat_body",
    "follow",
    "follow_to_end",
    "open_cluster",
    "wait_until",
    "watch_notifications",
]

ROOT: Final = Path(__file__).resolve().parents[2]
NGINX_CONF: Final = ROOT / "examples" / "nginx.conf"
FRONT: Final = "nginx"
"""The name :meth:`Cluster.client` takes for nginx."""
LEASE_PERIOD: Final = 1.0
"""The nodes' ``lease_period``: a dead node's jobs are found within two of these."""
JWT_SECRET: Final = "cluster-test-secret-of-32-bytes-or-more"
WORKSPACE: Final = "cluster"
READY_TIMEOUT: Final = 20.0
_LISTENING: Final = re.compile(r"troupe listening on (http://127\.0\.0\.1:(\d+))")
# The shipped config's addresses, which the test's own replace.
_SHIPPED_BACKENDS: Final = ("127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003")
_SHIPPED_LISTEN: Final = "listen 8080;"
# nginx adds this header to every response: the address of the node that served it.
_SERVED_BY: Final = "x-troupe-upstream"
_POLL: Final = 0.02


def _free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _authorization(user: str) -> dict[str, str]:
    """Headers that name ``user`` (workspace ``cluster``) to every node."""
    now = int(time.time())
    claims = {"sub": user, "workspace": WORKSPACE, "iat": now, "exp": now + 3600}
    return {"Authorization": "Bearer " + jwt.encode(claims, JWT_SECRET, algorithm="HS256")}


def chat_body(model: str = "fake", thread: str = "t1", prompt: str = "hello") -> dict[str, Any]:
    """A ``POST /v1/jobs`` body; the fake upstream picks its script by ``model``."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "thread_id": thread,
        "message_id": f"m-{thread}",
    }


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while True:
            if check():
                return
            await trio.sleep(_POLL)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _program(name: str) -> str:
    """The path of an installed server program (nginx lives in /usr/sbin, often off PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail(f"{name} is not installed (`make deps` installs Debian's package)")
    return found


@attrs.define(eq=False)
class Node:
    """One ``examples/server.py`` process; ``name`` is its ``node_id``."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    address: str = ""
    """``127.0.0.1:<port>``, as nginx names it."""
    killed: bool = False

    async def wait_listening(self) -> None:
        """Read the address from the ``troupe listening on`` line of the log; fail if the
        process exits first."""
        with trio.fail_after(READY_TIMEOUT):
            while (found := _LISTENING.search(self.log.read_text())) is None:
                if self.process.poll() is not None:
                    pytest.fail(f"node {self.name} exited:\n{self.log.read_text()}")
                await trio.sleep(_POLL)
        self.url = found[1]
        self.address = f"127.0.0.1:{found[2]}"

    def kill(self) -> None:
        """SIGKILL the process, as a crash of its machine would stop it."""
        self.killed = True
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=10) == -signal.SIGKILL


@attrs.define
class Cluster:
    """The running processes of :func:`open_cluster`."""

    nodes: dict[str, Node]
    front_url: str | None = None

    def client(self, where: str, user: str = "alice") -> httpx.AsyncClient:
        """An HTTP client of node ``where`` (or of nginx, :data:`FRONT`), as ``user``."""
        url = self.front_url if where == FRONT else self.nodes[where].url
        assert url is not None, "the cluster has no nginx"
        return httpx.AsyncClient(base_url=url, headers=_authorization(user), timeout=10.0)

    def serving(self, response: httpx.Response) -> Node:
        """The node that served ``response`` through nginx."""
        # After a retry nginx lists every address it tried; the last one answered.
        address = response.headers[_SERVED_BY].split(", ")[-1]
        (node,) = [node for node in self.nodes.values() if node.address == address]
        return node


def _render_nginx_conf(backends: Sequence[str], port: int) -> str:
    """``examples/nginx.conf`` with the test's addresses: its three backends become
    ``backends`` and it listens on ``port`` of 127.0.0.1. Fails if the shipped file
    no longer has the lines this replaces."""
    text = NGINX_CONF.read_text()
    replacements = [*zip(_SHIPPED_BACKENDS, backends, strict=True)]
    replacements.append((_SHIPPED_LISTEN, f"listen 127.0.0.1:{port};"))
    for shipped, ours in replacements:
        assert text.count(shipped) == 1, f"examples/nginx.conf: no single {shipped!r}"
        text = text.replace(shipped, ours)
    return text


def _nginx_main_conf(prefix: Path) -> str:
    """nginx's main config around the shipped file: the process, its logs and temporary
    files in ``prefix``, and a header naming the node that served each response."""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # The shipped location sets no add_header of its own, so it inherits this one.
    return f"""daemon off;
master_process off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} info;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix / "access.log"};
{temp}
    add_header X-Troupe-Upstream $upstream_addr always;
    include {prefix / "troupe.conf"};
}}
"""


_Spawn = Callable[[list[str], Path, "dict[str, str] | None"], "subprocess.Popen[bytes]"]
"""Starts a process: ``spawn(argv, log, env)``, its output going to ``log``."""


def _nginx_argv(prefix: Path, backends: Sequence[str], port: int) -> list[str]:
    """Write nginx's config files into ``prefix``; return the command that runs it."""
    prefix.mkdir()
    (prefix / "troupe.conf").write_text(_render_nginx_conf(backends, port))
    (prefix / "nginx.conf").write_text(_nginx_main_conf(prefix))
    conf, errors = prefix / "nginx.conf", prefix / "error.log"
    return [_program("nginx"), "-p", str(prefix), "-c", str(conf), "-e", str(errors)]


async def _start_nginx(prefix: Path, backends: Sequence[str], spawn: _Spawn) -> str:
    """Start nginx on the shipped config; return its URL once it accepts connections."""
    port = _free_port()
    process = spawn(_nginx_argv(prefix, backends, port), prefix / "stderr.log", None)
    with trio.fail_after(READY_TIMEOUT):
        while True:
            if process.poll() is not None:
                log = (prefix / "error.log").read_text() + (prefix / "stderr.log").read_text()
                pytest.fail(f"nginx exited:\n{log}")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(_POLL)
            else:
                await stream.aclose()
                return f"http://127.0.0.1:{port}"


def _node_env(
    name: str, redis_url: str, data_dir: Path, upstream: str | None, settings: Mapping[str, str]
) -> dict[str, str]:
    """The environment of node ``name``: this process's, without any troupe setting,
    plus the cluster's settings and then ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TROUPE_")}
    env.pop("OPENROUTER_API_KEY", None)
    env.update(
        TROUPE_STORE="redis",
        TROUPE_REDIS_URL=redis_url,
        TROUPE_NODE_ID=name,
        TROUPE_DATA_DIR=str(data_dir),
        TROUPE_JWT_SECRET=JWT_SECRET,
        TROUPE_LEASE_PERIOD=str(LEASE_PERIOD),
    )
    if upstream is None:
        env.update(TROUPE_UPSTREAM="simulated")
    else:
        env.update(
            TROUPE_UPSTREAM="openai",
            TROUPE_UPSTREAM_BASE_URL=upstream,
            TROUPE_UPSTREAM_API_KEY="sk-cluster-not-a-key",
        )
    env.update(settings)
    return env


@asynccontextmanager
async def open_cluster(
    workdir: Path,
    upstream: str | None,
    *,
    nodes: int = 3,
    nginx: bool = False,
    settings: Mapping[str, str] | None = None,
    redis: RedisServer | None = None,
) -> AsyncIterator[Cluster]:
    """Run a cluster for the block: a Redis of its own (or ``redis``, left running),
    ``nodes`` processes on it, named ``a``, ``b``, ... and, with ``nginx``, nginx in
    front of them (three nodes only, as the shipped config has).

    ``upstream`` is the base URL of an OpenAI-compatible server; None runs the
    simulated model. ``settings`` are more ``TROUPE_*`` variables for every node.
    Every process is SIGKILLed at the end; if the block went well, a node that died
    without :meth:`Node.kill` fails the test, with its log.
    """
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], log: Path, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        processes.append(process)
        return process

    own_redis = redis is None
    try:
        if redis is None:
            redis = RedisServer(workdir / "redis")
            redis.directory.mkdir()
            await trio.to_thread.run_sync(redis.start)
        started: dict[str, Node] = {}
        for name in "abcdefgh"[:nodes]:
            log = workdir / f"node-{name}.log"
            env = _node_env(name, redis.url, workdir / f"data-{name}", upstream, settings or {})
            argv = [sys.executable, "examples/server.py", "--port", "0"]
            started[name] = Node(name, spawn(argv, log, env), log)
        for node in started.values():
            await node.wait_listening()
        cluster = Cluster(started)
        if nginx:
            backends = [node.address for node in started.values()]
            cluster.front_url = await _start_nginx(workdir / "nginx", backends, spawn)
        yield cluster
        for node in started.values():
            if not node.killed and node.process.poll() is not None:
                pytest.fail(f"node {node.name} died:\n{node.log.read_text()}")
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        if own_redis and redis is not None:
            redis.stop()


# -- following -------------------------------------------------------------------------


@attrs.define
class Followed:
    """What a follower of one job was sent, over all its connections."""

    deltas: list[tuple[int, str]] = attrs.Factory(list)
    status: dict[str, Any] | None = None
    snapshots: int = 0
    breaks: int = 0
    """Connections that broke before the status event."""
    refusals: int = 0
    """Connections answered 503 (the store was down)."""

    @property
    def text(self) -> str:
        return "".join(content for _, content in self.deltas)

    @property
    def last_seq(self) -> int:
        return self.deltas[-1][0] if self.deltas else 0


@attrs.frozen
class Connection:
    """One connection of :func:`follow`: the response's headers, and the scope that
    ends it (``scope.cancel()``)."""

    response: httpx.Response
    scope: trio.CancelScope


async def follow(
    client: httpx.AsyncClient,
    job_id: str,
    into: Followed,
    *,
    task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Read the job's event stream into ``into``, resuming after its last delta
    (``Last-Event-ID``) if it has one; return after the status event, or when the
    connection breaks (counted in ``into.breaks``) or is refused with 503 (in
    ``into.refusals``), or when the :class:`Connection` given to ``task_status`` is
    cancelled.

    Asserts what the stream must hold: one snapshot first, then deltas whose seqs
    follow on from what ``into`` already had, with nothing after the status.
    """
    headers = {"Last-Event-ID": str(into.last_seq)} if into.deltas else {}
    with trio.CancelScope() as scope:
        try:
            async with client.stream(
                "GET", f"/v1/jobs/{job_id}/events", headers=headers
            ) as response:
                task_status.started(Connection(response, scope))
                if response.status_code == 503:
                    into.refusals += 1
                    return
                assert response.status_code == 200, await response.aread()
                events = _Events()
                first = True
                async for line in response.aiter_lines():
                    if (event := events.feed(line)) is not None:
                        assert into.status is None, f"{event} after the status"
                        assert (event.name == "snapshot") == first, event
                        first = False
                        _record(into, event)
        except httpx.TransportError:
            into.breaks += 1


async def follow_to_end(
    client: httpx.AsyncClient, job_id: str, into: Followed, timeout: float = 20.0
) -> None:
    """:func:`follow` the job until its status event, connecting again (every 100 ms)
    after a break or a refusal; fail after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while into.status is None:
            async with trio.open_nursery() as nursery:
                await nursery.start(follow, client, job_id, into)
            if into.status is None:
                await trio.sleep(0.1)


def _record(into: Followed, event: Event) -> None:
    payload = orjson.loads(event.data)
    if event.name == "snapshot":
        into.snapshots += 1
    elif event.name == "delta":
        assert event.id == str(payload["seq"]), event
        assert payload["seq"] == into.last_seq + 1, (into.last_seq, event)
        into.deltas.append((payload["seq"], payload["content"]))
    elif event.name == "status":
        into.status = payload
    else:
        raise AssertionError(f"unexpected event {event}")


async def watch_notifications(
    client: httpx.AsyncClient,
    into: list[dict[str, Any]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Append to ``into`` every notification the caller's live stream
    (``/v1/notifications/events``) sends, until cancelled."""
    async with client.stream("GET", "/v1/notifications/events") as response:
        assert response.status_code == 200, await response.aread()
        task_status.started()
        events = _Events()
        async for line in response.aiter_lines():
            if (event := events.feed(line)) is not None and event.name == "notification":
                into.append(orjson.loads(event.data))


@attrs.frozen
class Event:
    """One server-sent event."""

    name: str
    data: str
    id: str


@attrs.define
class _Events:
    """Reads server-sent events line by line: :meth:`feed` returns the event a blank
    line completes (comments and nameless events are none)."""

    name: str = ""
    data: str = ""
    id: str = ""

    def feed(self, line: str) -> Event | None:
        if line:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                self.name = value
            elif field == "data":
                self.data = value
            elif field == "id":
                self.id = value
            return None
        event = Event(self.name, self.data, self.id) if self.name else None
        self.name = self.data = self.id = ""
        return event
