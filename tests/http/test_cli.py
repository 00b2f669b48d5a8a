"""The ``troupe`` command against the example server running as a separate process."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import attrs
import httpx
import jwt
import pytest
from typer.testing import CliRunner, Result

from actors.client.cli import app

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0


@attrs.frozen
class ServerProcess:
    process: subprocess.Popen[str]
    url: str
    dev_token: str = attrs.field(repr=False)
    data_dir: Path
    env: dict[str, str] = attrs.field(repr=False)
    stderr_path: Path
    reader: threading.Thread

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def server_env(data_dir: Path, tokens_per_second: float = 200.0) -> dict[str, str]:
    """The process environment with only the test's TROUPE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TROUPE_")}
    env.pop("OPENROUTER_API_KEY", None)
    env.update(
        TROUPE_DATA_DIR=str(data_dir),
        TROUPE_STORE="sqlite",
        TROUPE_SIMULATED_TOKENS_PER_SECOND=str(tokens_per_second),
        TROUPE_DRAIN_TIMEOUT="5",
    )
    return env


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def start_server(
    command: list[str], data_dir: Path, tokens_per_second: float = 200.0
) -> ServerProcess:
    """Start ``command`` (a server printing the example's banner) and wait for its
    dev token. The caller stops it with :func:`stop_server`."""
    env = server_env(data_dir, tokens_per_second)
    stderr_path = data_dir / "server-stderr.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with stderr_path.open("w") as stderr_file:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
        )
    lines: queue.Queue[str | None] = queue.Queue()
    assert process.stdout is not None
    reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
    reader.start()
    try:
        printed: list[str] = []
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not printed or not printed[-1].startswith("eyJ"):
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"the server exited early:\n{stderr_path.read_text()}"
            printed.append(line)
        url = next(
            line.split("troupe listening on ", 1)[1] for line in printed if "listening on" in line
        )
        assert "development token" in printed[-2]
        return ServerProcess(process, url, printed[-1], data_dir, env, stderr_path, reader)
    except BaseException:
        _reap(process, reader)
        raise


def _reap(process: subprocess.Popen[str], reader: threading.Thread) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    reader.join(timeout=10)  # it ends at the pipe's EOF
    assert process.stdout is not None
    process.stdout.close()


def stop_server(server: ServerProcess) -> None:
    _reap(server.process, server.reader)


@pytest.fixture(scope="module")
def example_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``examples/server.py --port 0`` on a SQLite store, for the whole module."""
    data_dir = tmp_path_factory.mktemp("troupe-cli")
    server = start_server([sys.executable, "examples/server.py", "--port", "0"], data_dir)
    try:
        yield server
    finally:
        stop_server(server)


def run_cli(
    server: ServerProcess, *args: str, token: bool = True
) -> subprocess.CompletedProcess[str]:
    """``python -m actors.client.cli ARGS`` in a child process, pointed at ``server``."""
    env = dict(server.env, TROUPE_URL=server.url)
    if token:
        env["TROUPE_TOKEN"] = server.dev_token
    return subprocess.run(
        [sys.executable, "-m", "actors.client.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def invoke(server: ServerProcess, *args: str, token: str | None = None) -> Result:
    """The CLI in this process (faster), against ``server``."""
    env: dict[str, str | None] = {
        "TROUPE_URL": server.url,
        "TROUPE_TOKEN": token if token is not None else server.dev_token,
    }
    return CliRunner().invoke(app, list(args), env=env)


def wait_for_status(server: ServerProcess, job_id: str, status: str) -> None:
    # By the list of jobs: polling the job itself would count as watching it, and a
    # job watched as it ends leaves no notification.
    deadline = time.monotonic() + 20
    headers = {"Authorization": f"Bearer {server.dev_token}"}
    while time.monotonic() < deadline:
        url = f"{server.url}/v1/jobs?status={status}"
        listed = httpx.get(url, headers=headers, timeout=10).json()["jobs"]
        if any(job["id"] == job_id for job in listed):
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {status}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- tests ----------------------------------------------------------------------------


def test_token_prints_only_a_token_the_server_accepts(example_server: ServerProcess) -> None:
    result = run_cli(example_server, "token", "--user", "grace", "--workspace", "navy")
    assert result.returncode == 0, result.stderr
    minted = result.stdout.strip()
    assert result.stdout == minted + "\n"
    assert minted.count(".") == 2 and " " not in minted

    answer = httpx.get(
        f"{example_server.url}/v1/jobs",
        headers={"Authorization": f"Bearer {minted}"},
        timeout=10,
    )
    assert answer.status_code == 200
    assert answer.json() == {"jobs": []}


def test_submit_prints_the_answer_live(example_server: ServerProcess) -> None:
    result = run_cli(example_server, "submit", "hello")
    assert result.returncode == 0, result.stderr
    assert 'You wrote: "hello"' in result.stdout
    assert result.stdout.rstrip().endswith("Have a nice day!")
    assert "[complete] job " in result.stderr


def test_jobs_status_abort_and_notifications(example_server: ServerProcess) -> None:
    started = invoke(example_server, "submit", "--no-follow", "in the background")
    assert started.exit_code == 0, started.output
    job_id = started.stdout.strip()
    assert len(job_id.split()) == 1
    wait_for_status(example_server, job_id, "complete")

    listed = invoke(example_server, "jobs")
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if job_id in line)
    assert "complete" in row

    assert job_id in invoke(example_server, "jobs", "--status", "complete").stdout
    assert job_id not in invoke(example_server, "jobs", "--status", "aborted").stdout

    shown = invoke(example_server, "status", job_id)
    assert shown.exit_code == 0, shown.output
    assert "complete" in shown.stdout
    assert 'You wrote: "in the background"' in shown.stdout

    aborted = invoke(example_server, "abort", job_id)
    assert aborted.exit_code == 0, aborted.output
    assert f"job {job_id} was not aborted: it is already complete" in aborted.stdout

    # Nobody followed this job, so its completion left a notification.
    notes = invoke(example_server, "notifications", "--unread")
    assert notes.exit_code == 0, notes.output
    note = next(line for line in notes.stdout.splitlines() if job_id in line)
    assert "Background response completed" in note
    assert "unread" in note


def test_unknown_job_exits_1_with_a_clear_message(example_server: ServerProcess) -> None:
    result = run_cli(example_server, "status", "no-such-job")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: not_found: no such job"
    assert result.stdout == ""

    aborted = invoke(example_server, "abort", "no-such-job")
    assert aborted.exit_code == 1
    assert "error: not_found: no such job" in aborted.stderr
    assert "Traceback" not in aborted.output


def test_a_bad_token_exits_1(example_server: ServerProcess) -> None:
    result = invoke(example_server, "jobs", token="not-a-jwt")
    assert result.exit_code == 1
    assert "error: unauthorized: invalid token" in result.stderr
    assert "not-a-jwt" not in result.output


def test_without_a_token_it_mints_a_dev_token_from_the_local_config(
    example_server: ServerProcess,
) -> None:
    # The dev token the server printed belongs to user "dev", like the minted one.
    started = invoke(example_server, "submit", "--no-follow", "who am I")
    job_id = started.stdout.strip()
    env: dict[str, str | None] = {
        "TROUPE_URL": example_server.url,
        "TROUPE_TOKEN": None,
        "TROUPE_DATA_DIR": str(example_server.data_dir),
    }
    result = CliRunner().invoke(app, ["jobs"], env=env)
    assert result.exit_code == 0, result.output
    assert job_id in result.stdout


def test_unreachable_server_is_reported_without_a_traceback() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["jobs", "--url", url, "--token", "t"])
    assert result.exit_code == 1
    assert f"error: cannot reach the server at {url}" in result.stderr
    assert "Traceback" not in result.output


def test_bad_configuration_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["token", "--user", "u", "--workspace", "w"],
        env={"TROUPE_DATA_DIR": str(tmp_path), "TROUPE_PORT": "not-a-port"},
    )
    assert result.exit_code == 2
    assert "TROUPE_PORT" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "setting",
    [
        {"TROUPE_JWT_JWKS_URL": "https://auth.example.test/.well-known/jwks.json"},
        {"TROUPE_AUTH_MODE": "trusted_headers"},
    ],
    ids=["jwks", "trusted-headers"],
)
def test_token_refuses_to_mint_what_the_server_would_not_accept(
    tmp_path: Path, setting: dict[str, str]
) -> None:
    result = CliRunner().invoke(
        app,
        ["token", "--user", "u", "--workspace", "w"],
        env={"TROUPE_DATA_DIR": str(tmp_path), **setting},
    )
    assert result.exit_code == 2
    assert "pass --token" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "jwt-secret").exists()


def test_token_uses_the_configured_claims_issuer_and_audience(tmp_path: Path) -> None:
    env = {
        "TROUPE_DATA_DIR": str(tmp_path),
        "TROUPE_JWT_SECRET": "cli-test-secret-0123456789abcdef0123",
        "TROUPE_USER_CLAIM": "uid",
        "TROUPE_WORKSPACE_CLAIM": "org_id",
        "TROUPE_JWT_ISSUER": "https://issuer.test",
        "TROUPE_JWT_AUDIENCE": "troupe",
    }
    result = CliRunner().invoke(app, ["token", "--user", "ada", "--workspace", "acme"], env=env)
    assert result.exit_code == 0, result.stderr
    claims = jwt.decode(
        result.stdout.strip(),
        env["TROUPE_JWT_SECRET"],
        algorithms=["HS256"],
        audience="troupe",
        issuer="https://issuer.test",
    )
    assert (claims["uid"], claims["org_id"]) == ("ada", "acme")


@pytest.mark.parametrize(
    "command",
    [["examples/server.py"], ["-m", "actors.client.cli", "serve"]],
    ids=["example", "troupe-serve"],
)
def test_server_runs_until_sigint_then_exits_0(command: list[str], tmp_path: Path) -> None:
    server = start_server([sys.executable, *command, "--port", "0"], tmp_path / "data")
    try:
        started = run_cli(server, "submit", "--no-follow", "still running at shutdown")
        assert started.returncode == 0, started.stderr
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=20) == 0, server.stderr()
    finally:
        stop_server(server)


def test_ctrl_c_detaches_and_follow_reattaches(tmp_path: Path) -> None:
    server = start_server(
        [sys.executable, "examples/server.py", "--port", "0"], tmp_path, tokens_per_second=40
    )
    try:
        env = dict(server.env, TROUPE_URL=server.url, TROUPE_TOKEN=server.dev_token)
        cli = subprocess.Popen(
            [sys.executable, "-m", "actors.client.cli", "submit", "wait for me"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert cli.stderr is not None
            header = cli.stderr.readline()  # printed once the job has started
            job_id = header.split()[1]
            time.sleep(0.3)
            cli.send_signal(signal.SIGINT)
            out, err = cli.communicate(timeout=COMMAND_TIMEOUT)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.communicate()
        assert cli.returncode == 130, err
        assert f"detached; job {job_id} goes on (troupe follow {job_id})" in err
        assert "Traceback" not in err

        rest = invoke(server, "follow", job_id)
        assert rest.exit_code == 0, rest.output
        assert rest.stdout.startswith(out.strip())
        assert 'You wrote: "wait for me"' in rest.stdout
        assert rest.stdout.rstrip().endswith("Have a nice day!")
        assert f"[complete] job {job_id}" in rest.stderr
    finally:
        stop_server(server)
