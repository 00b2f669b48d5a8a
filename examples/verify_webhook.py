"""How a receiver checks a troupe webhook (Standard Webhooks), with the standard library only.

The README shows everything below this docstring; a test holds the two together.
"""

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

TOLERANCE = 5 * 60  # seconds; an older (or future) timestamp is refused, against replays


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> Any:
    """Return the delivery's JSON payload; raise ValueError if it is not troupe's."""
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE:
        raise ValueError("webhook timestamp is outside the tolerance")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.digest(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    expected = "v1," + base64.b64encode(mac).decode()
    # Several space-separated signatures may come, while a secret is being rotated.
    if not any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split()):
        raise ValueError("webhook signature does not match")
    return json.loads(body)
