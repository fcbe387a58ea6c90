"""Ids the engine makes: decisions and triggers share one shape."""

from __future__ import annotations

import os
import time

__all__ = ["new_decision_id"]


def new_decision_id(now_ms: int | None = None) -> str:
    """Time-ordered and unguessable: 12 hex of ms, then 12 random hex.

    >>> len(new_decision_id(1_700_000_000_000)), new_decision_id(1)[:12]
    (24, '000000000001')
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{now_ms:012x}{os.urandom(6).hex()}"
