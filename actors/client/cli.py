"""The ``troupe`` command: run the server, mint tokens, and use the API from a terminal.

``troupe serve`` runs the service like ``examples/server.py``; ``troupe token``
mints a token the server accepts. The other commands talk to a running server
at ``--url`` (``TROUPE_URL``) with ``--token`` (``TROUPE_TOKEN``); without a
token they mint a development token for user and workspace ``dev`` from the
local configuration, so they work against a local server with no set-up.

Expected failures (an API error, an unreachable server, a bad setting) print
one ``error: ...`` line on stderr and exit non-zero: 1 for API and connection
errors, 2 for configuration and usage errors, 130 when interrupted.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import attrs
import trio
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from actors.client.client import TroupeClient, TroupeConnectionError, TroupeError
from actors.config import ConfigError, ServiceConfig, load_config
from actors.http.auth import TokenAuthority

__all__ = ["app", "main"]

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_MODEL = "openrouter/auto"
DEV_USER = DEV_WORKSPACE = "dev"
DEV_TOKEN_TTL = 24 * 3600.0

EXIT_API_ERROR = 1
EXIT_CONFIG_ERROR = 2
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="troupe",
    help="Background streaming of LLM chat responses: run the server and use its API.",
    no_args_is_help=True,
    add_completion=False,
    # Locals in a traceback could show a token.
    pretty_exceptions_show_locals=False,
)

UrlOption = Annotated[
    str, typer.Option("--url", envvar="TROUPE_URL", help="Base URL of the troupe server.")
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="TROUPE_TOKEN",
        help="Bearer token; without one, a development token is minted from the local "
        "configuration.",
        show_default=False,
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="A TOML settings file (TROUPE_* variables also apply)."),
]

_STATUS_STYLES = {
    "queued": "cyan",
    "streaming": "blue",
    "complete": "green",
    "error": "red",
    "aborted": "yellow",
}


_PIPE_WIDTH = 200
"""Line width of tables written to a pipe or file, where rows must not be squeezed."""


def _stdout() -> Console:
    width = None if sys.stdout.isatty() else _PIPE_WIDTH
    return Console(highlight=False, width=width)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str, code: int) -> typer.Exit:
    _stderr().print(Text(f"error: {message}", style="red"))
    return typer.Exit(code)


def _load_config(path: Path | None, **overrides: Any) -> ServiceConfig:
    """The configuration as the server reads it; exits 2 on a bad setting."""
    try:
        config = load_config(path)
        changes = {name: value for name, value in overrides.items() if value is not None}
        return config.with_overrides(**changes) if changes else config
    except ConfigError as error:
        raise _fail(f"configuration: {error}", EXIT_CONFIG_ERROR) from None


@attrs.frozen
class _Connection:
    url: str
    token: str | None = attrs.field(repr=False)
    config: Path | None

    def resolve_token(self) -> str:
        if self.token:
            return self.token
        return _minter(self.config).mint(DEV_USER, DEV_WORKSPACE, ttl=DEV_TOKEN_TTL)


def _minter(path: Path | None) -> TokenAuthority:
    """What mints tokens the configured server accepts; exits 2 when it accepts none
    this side can make (its tokens come from an auth provider or a gateway)."""
    minter = TokenAuthority.for_config(_load_config(path))
    if minter is None:
        raise _fail(
            "this server checks tokens from an auth provider (jwt_public_key or "
            "jwt_jwks_url) or trusts a gateway's headers (auth_mode); troupe can only "
            "mint tokens for a jwt_secret: pass --token",
            EXIT_CONFIG_ERROR,
        )
    return minter


def _call(connection: _Connection, action: Callable[[TroupeClient], Awaitable[int]]) -> None:
    """Run ``action`` with a client under trio; turn its outcome into the exit code."""
    token = connection.resolve_token()

    async def run() -> int:
        async with TroupeClient(connection.url, token) as client:
            return await action(client)

    try:
        code = trio.run(run)
    except TroupeConnectionError as error:
        raise _fail(error.message, EXIT_API_ERROR) from None
    except TroupeError as error:
        hint = ""
        if error.status == 401 and not connection.token:
            hint = " (pass --token or set TROUPE_TOKEN for this server)"
        raise _fail(f"{error}{hint}", EXIT_API_ERROR) from None
    raise typer.Exit(code)


def _when(value: str | None, *, full: bool = False) -> str:
    """An API timestamp in local time: compact for tables, complete with ``full``."""
    if not value:
        return "-"
    try:
        moment = datetime.fromisoformat(value).astimezone()
    except ValueError:
        return value
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z" if full else "%m-%d %H:%M:%S")


def _table(*headers: str) -> Table:
    """A borderless table whose cells do not wrap unless a column allows it."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for header in headers:
        table.add_column(header, no_wrap=True)
    return table


def _status_text(status: str) -> Text:
    return Text(status, style=_STATUS_STYLES.get(status, ""))


# -- server-side commands ------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on; 0 picks a free one.")] = None,
    config: ConfigOption = None,
) -> None:
    """Run the service with its HTTP API until SIGINT or SIGTERM.

    Settings come from --config, then TROUPE_* variables; --host and --port win.
    """
    from actors.http.server import run_server  # the server stack loads only here

    run_server(_load_config(config, host=host, port=port))


@app.command()
def token(
    user: Annotated[str, typer.Option("--user", help="The user id (sub claim).")],
    workspace: Annotated[str, typer.Option("--workspace", help="The workspace id.")],
    ttl: Annotated[float, typer.Option("--ttl", help="Validity in seconds.", min=1)] = 3600.0,
    admin: Annotated[bool, typer.Option("--admin", help="Add the admin claim.")] = False,
    config: ConfigOption = None,
) -> None:
    """Mint a token the server accepts and print it alone on stdout."""
    typer.echo(_minter(config).mint(user, workspace, ttl=ttl, admin=admin))


# -- client commands -------------------------------------------------------------------


@app.command()
def submit(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    model: Annotated[str, typer.Option(envvar="TROUPE_MODEL", help="The model to ask.")] = (
        DEFAULT_MODEL
    ),
    thread: Annotated[
        str | None, typer.Option(help="Thread id (default: a new thread).", show_default=False)
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Follow the answer live.")
    ] = True,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """Start a background job and follow its answer live (or print its id)."""
    connection = _Connection(url, token, config)
    following: list[str] = []

    async def action(client: TroupeClient) -> int:
        job = await client.start_job(
            model,
            [{"role": "user", "content": prompt}],
            thread_id=thread or uuid.uuid4().hex,
            message_id=uuid.uuid4().hex,
        )
        if not follow:
            typer.echo(job["id"])
            return 0
        following.append(job["id"])
        _stderr().print(Text(f"job {job['id']} in thread {job['thread_id']}", style="dim"))
        return await _follow_job(client, job["id"])

    _call_interruptible(connection, action, following)


@app.command("follow")
def follow_command(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """Follow a job live from its first delta to its final status."""

    async def action(client: TroupeClient) -> int:
        return await _follow_job(client, job_id)

    _call_interruptible(_Connection(url, token, config), action, [job_id])


def _call_interruptible(
    connection: _Connection,
    action: Callable[[TroupeClient], Awaitable[int]],
    following: list[str],
) -> None:
    """:func:`_call`, where Ctrl-C detaches from the job in ``following`` (if any)
    and exits 130; the job itself goes on."""
    try:
        _call(connection, action)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        sys.stdout.flush()
        if following:
            message = f"detached; job {following[0]} goes on (troupe follow {following[0]})"
        else:
            message = "interrupted"
        _stderr().print(Text(message, style="dim"))
        raise typer.Exit(EXIT_INTERRUPTED) from None


async def _follow_job(client: TroupeClient, job_id: str) -> int:
    """Print the job's content as it arrives, then its status; 0 if it completed."""
    err = _stderr()
    mid_line = False

    def on_retry(attempt: int, cause: BaseException) -> None:
        nonlocal mid_line
        if mid_line:
            sys.stdout.write("\n")
            sys.stdout.flush()
            mid_line = False
        err.print(Text(f"(connection lost; reconnecting, attempt {attempt})", style="dim"))

    final: dict[str, Any] = {}
    async with client.follow(job_id, on_retry=on_retry) as events:
        async for event in events:
            if event.event == "delta" and event.data.get("content"):
                sys.stdout.write(event.data["content"])
                sys.stdout.flush()
                mid_line = True
            elif event.event == "status":
                final = event.data
    if mid_line:
        sys.stdout.write("\n")
        sys.stdout.flush()
    status = str(final.get("status", "unknown"))
    line = Text.assemble(("[", "dim"), _status_text(status), ("] ", "dim"), f"job {job_id}")
    if final.get("finish_reason"):
        line.append(f", finish reason {final['finish_reason']}", style="dim")
    err.print(line)
    if status == "complete":
        return 0
    if final.get("error"):
        err.print(Text(f"error: {final['error']}", style="red"))
    return EXIT_API_ERROR


@app.command()
def jobs(
    status: Annotated[
        str | None,
        typer.Option(help="Only jobs with this status (queued, streaming, complete, ...)."),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """List your jobs."""

    async def action(client: TroupeClient) -> int:
        found = await client.list_jobs(status)
        out = _stdout()
        if not found:
            out.print("no jobs")
            return 0
        table = _table("id", "status", "model", "chunks", "started")
        table.columns[0].min_width = max(len(job["id"]) for job in found)
        table.columns[2].no_wrap = False
        table.columns[3].justify = "right"
        for job in found:
            table.add_row(
                Text(job["id"]),
                _status_text(job["status"]),
                Text(job["model"]),
                str(job["chunks_received"]),
                _when(job["started_at"]),
            )
        out.print(table)
        return 0

    _call(_Connection(url, token, config), action)


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """Show a job and the content it has so far."""

    async def action(client: TroupeClient) -> int:
        job = await client.get_job(job_id)
        out = _stdout()
        details = Table.grid(padding=(0, 2))
        details.add_column(style="bold", no_wrap=True)
        details.add_column(overflow="fold")
        usage = job.get("usage") or {}
        rows: list[tuple[str, str | Text]] = [
            ("id", job["id"]),
            ("status", _status_text(job["status"])),
            ("model", job["model"]),
            ("thread", job["thread_id"]),
            ("message", job["message_id"]),
            ("started", _when(job["started_at"], full=True)),
            ("finished", _when(job["completed_at"], full=True)),
            ("chunks", str(job["chunks_received"])),
            ("finish reason", job.get("finish_reason") or "-"),
            ("tokens", str(usage.get("total_tokens", "-")) if usage else "-"),
        ]
        if job.get("error"):
            rows.append(("error", Text(job["error"], style="red")))
        for name, value in rows:
            details.add_row(name, value if isinstance(value, Text) else Text(value))
        out.print(details)
        out.rule(style="dim")
        out.print(Text(job["content_delta"]), soft_wrap=True)
        return 0

    _call(_Connection(url, token, config), action)


@app.command()
def abort(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """Abort a running job (its upstream request is closed)."""

    async def action(client: TroupeClient) -> int:
        result = await client.abort_job(job_id)
        state = result["job"]["status"]
        if result["aborted"]:
            _stdout().print(Text(f"aborted job {job_id}"))
        else:
            _stdout().print(Text(f"job {job_id} was not aborted: it is already {state}"))
        return 0

    _call(_Connection(url, token, config), action)


@app.command()
def notifications(
    unread: Annotated[bool, typer.Option("--unread", help="Only unread notifications.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many.", min=1, max=500)] = 50,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    config: ConfigOption = None,
) -> None:
    """List your notifications, newest first."""

    async def action(client: TroupeClient) -> int:
        found = await client.list_notifications(unread=unread, limit=limit)
        out = _stdout()
        if not found:
            out.print("no notifications")
            return 0
        table = _table("created", "state", "job", "title", "body")
        table.columns[2].min_width = max(len(n["job_id"] or "-") for n in found)
        for column in table.columns[3:]:
            column.no_wrap = False
        for notification in found:
            table.add_row(
                _when(notification["created_at"]),
                Text("unread", style="bold cyan") if notification["read_at"] is None else "read",
                Text(notification["job_id"] or "-"),
                Text(notification["title"]),
                Text(notification["body"]),
            )
        out.print(table)
        return 0

    _call(_Connection(url, token, config), action)


def main() -> None:
    """The console script's entry point."""
    app(prog_name="troupe")


if __name__ == "__main__":
    main()
