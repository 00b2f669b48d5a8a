"""Embed the troupe service in another trio program, with no HTTP.

Starts a job on the simulated model and follows it live, starts a second job
and aborts it, then prints the user's notifications. Run it with
``python examples/embed.py`` (it uses an in-memory store).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio

from actors import (
    ChatRequest,
    DeltaEvent,
    Owner,
    ServiceConfig,
    SnapshotEvent,
    StatusEvent,
    open_service,
)
from actors.logs import configure_logging


def chat(prompt: str, n: int) -> ChatRequest:
    """A one-message chat in thread ``thread-<n>``."""
    return ChatRequest(
        model="simulated",
        messages=[{"role": "user", "content": prompt}],
        thread_id=f"thread-{n}",
        message_id=f"message-{n}",
    )


async def main() -> None:
    configure_logging("warning", json=False)
    with tempfile.TemporaryDirectory() as data_dir:
        config = ServiceConfig(
            store="memory", data_dir=Path(data_dir), simulated_tokens_per_second=200.0
        )
        async with open_service(config) as service:
            me = Owner(user_id="ada", workspace_id="analytical-engine")

            job = await service.start_job(me, chat("Tell me about actors.", 1))
            print(f"started job {job.id}")
            async with service.follow(me, job.id) as events:
                async for event in events:
                    if isinstance(event, SnapshotEvent):
                        print(f"[{event.job.status.value}] ", end="")
                    elif isinstance(event, DeltaEvent):
                        print(event.content, end="", flush=True)
                    elif isinstance(event, StatusEvent):
                        print(f"\n[{event.status.value}] after {event.last_seq} deltas")

            other = await service.start_job(me, chat("Never mind.", 2))
            aborted = await service.abort_job(me, other.id)
            view = await service.get_job(me, other.id)
            assert view is not None
            print(f"aborted job {other.id}: {aborted}, status {view.status.value}")

            # The first job was being followed when it finished, so it did not
            # notify; this one runs unwatched and does.
            async with service.follow_notifications(me) as notifications:
                await service.start_job(me, chat("Ping me when done.", 3))
                notification = await anext(notifications)
                print(f"notification: {notification.title}: {notification.body}")
            for notification in await service.list_notifications(me):
                print(f"- {notification.type.value} for job {notification.job_id}")


if __name__ == "__main__":
    trio.run(main)
