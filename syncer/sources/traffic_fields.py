"""A service's traffic policy from the text a source gives (annotations, meta, a file).

Shared by the sources: `syncer.traffic.policy_from_fields` does the parsing; this
only makes sure an error names the key at fault, so that a rejection points the
operator at the right annotation, meta key or line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from syncer.model import TrafficPolicy
from syncer.traffic import POLICY_KEYS, PolicyFieldError, policy_from_fields


def policy_of(fields: Mapping[str, Any], base: TrafficPolicy) -> TrafficPolicy:
    """`base` with the policy keys of `fields` applied; PolicyFieldError names the key.

    A value out of range is found when the whole policy is built, and that error
    names the first key given, not the one at fault (`zone-aware: true` with
    `min-local: 0` would blame `zone-aware`): look for the key that fails alone.
    """
    try:
        return policy_from_fields(fields, base)
    except PolicyFieldError as e:
        error = e
    for key in POLICY_KEYS:
        if key in fields:
            try:
                policy_from_fields({key: fields[key]}, base)
            except PolicyFieldError as alone:
                raise alone from None
    raise error


def message_of(error: PolicyFieldError) -> str:
    """The error without the key in front (the rejection's field names it)."""
    return str(error).removeprefix(f"{error.key}: ")


__all__ = ["POLICY_KEYS", "PolicyFieldError", "message_of", "policy_of"]
