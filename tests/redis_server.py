"""A ``redis-server`` of the tests' own, on a free port, and the fixture that shares one.

The server keeps its files in a directory of its own and, unless asked for the
append-only file, persists nothing. Tests share the session's server and stay
apart by key prefix (:func:`fresh_prefix`). Without ``redis-server`` on the PATH a
test that needs it fails: it is never skipped.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "fresh_prefix", "redis_server"]

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


def fresh_prefix() -> str:
    """A key prefix no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}:"


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, started by :meth:`start`.

    :meth:`stop` and :meth:`start` again (or :meth:`restart`) bring it back on the
    same port, with its data when ``appendonly`` is on. The methods block (for up to
    ten seconds): from trio, call them through ``trio.to_thread.run_sync``.
    """

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.directory / "redis.log"

    def start(self) -> None:
        """Start the server (on a free port the first time, the same one after) and
        return once it answers PING. Fails the test if it cannot."""
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed (make test installs it)", pytrace=False)
        self.directory.mkdir(parents=True, exist_ok=True)
        restarting = bool(self.port)
        for _ in range(3):
            if not restarting:
                self.port = _free_port()  # Another may take it first: then try again.
            self._process = subprocess.Popen(
                [
                    executable,
                    *("--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--dir", str(self.directory), "--save", ""),
                    *("--appendonly", "yes" if self.appendonly else "no"),
                    *("--logfile", str(self.log_file)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_until_answering():
                return
            self._reap()
        log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        pytest.fail(
            f"redis-server did not start on port {self.port}:\n{log[-2000:]}", pytrace=False
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it to exit."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _wait_until_answering(self) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def _reap(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's Redis server, started when a test first needs it."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
