"""The README's webhook check is ``examples/verify_webhook.py``, and it does what it says."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from actors.notifications.webhooks import sign
from tests.webhook_receiver import SECRET, verify

ROOT = Path(__file__).resolve().parent.parent
HEADING = "### Webhooks"

BODY = b'{"type":"job.completed","timestamp":"2025-03-01T12:00:00+00:00","data":{"id":"j1"}}'
NOW = 1_740_830_400


def headers(body: bytes = BODY, *, timestamp: int = NOW, secret: str = SECRET) -> dict[str, str]:
    return {
        "webhook-id": "msg_job_j1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, "msg_job_j1", timestamp, body.decode()),
    }


def test_the_readme_shows_the_example_file_verbatim() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    # From the heading to the next one.
    section = re.split(r"\n#{1,3} ", readme.split(f"\n{HEADING}\n", 1)[1], maxsplit=1)[0]
    [shown] = re.findall(r"^```python\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    source = (ROOT / "examples" / "verify_webhook.py").read_text(encoding="utf-8")
    # Everything below the module docstring.
    assert shown == source.split('"""\n', 1)[1].lstrip("\n")


def test_a_signed_delivery_gives_its_payload() -> None:
    assert verify(SECRET, headers(), BODY, now=NOW + 299) == {
        "type": "job.completed",
        "timestamp": "2025-03-01T12:00:00+00:00",
        "data": {"id": "j1"},
    }


def test_one_good_signature_among_several_is_enough() -> None:
    signed = headers()
    signed["webhook-signature"] = "v1,bm90IGl0 " + signed["webhook-signature"]
    assert verify(SECRET, signed, BODY, now=NOW)["data"] == {"id": "j1"}


def test_a_changed_body_is_refused() -> None:
    with pytest.raises(ValueError, match="signature"):
        verify(SECRET, headers(), BODY.replace(b"j1", b"j2"), now=NOW)


def test_another_secret_is_refused() -> None:
    other = "whsec_" + base64.b64encode(b"another key of thirty-two bytes!").decode()
    with pytest.raises(ValueError, match="signature"):
        verify(SECRET, headers(secret=other), BODY, now=NOW)


@pytest.mark.parametrize("skew", [-301, 301])
def test_a_timestamp_beyond_five_minutes_is_refused(skew: int) -> None:
    with pytest.raises(ValueError, match="tolerance"):
        verify(SECRET, headers(), BODY, now=NOW + skew)


def test_a_replayed_signature_with_a_new_timestamp_is_refused() -> None:
    replayed = headers() | {"webhook-timestamp": str(NOW + 60)}
    with pytest.raises(ValueError, match="signature"):
        verify(SECRET, replayed, BODY, now=NOW + 60)
