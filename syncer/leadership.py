"""What both leader-election backends share: who we are, and how the leader hands its
ownership records to the next leader (compressed JSON)."""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
import zlib
from typing import Any


def encode_payload(data: dict[str, Any]) -> str:
    """JSON, compressed: 2,000 upstream names fit in a few KiB of annotation."""
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(raw, 9)).decode()


def decode_payload(text: str) -> dict[str, Any]:
    data = json.loads(zlib.decompress(base64.b64decode(text, validate=True)))
    if not isinstance(data, dict):
        raise ValueError("ownership annotation is not a JSON object")
    return data


def default_identity() -> str:
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
