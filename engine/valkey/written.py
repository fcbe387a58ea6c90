"""What this worker already wrote that needs writing only once: a bounded memory.

Report and cohort counters (engine/delivery/uplift.py, engine/delivery/reports.py) set
a key's TTL, list a dimension value in the day's set, check a name against the day's
cap: each needed once a day per key or name, not per decision. Remembering which this
worker already did takes steady-state counting down to one command per counter. It
lives on the `Store` (`Store.written`), the one object every counter is handed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

__all__ = ["SEEN_MAX", "Seen"]

# Entries a worker remembers (~250 bytes each). A day at the report caps needs ~6,000
# (per dimension kind 200 values, their 4 cohort keys' TTLs, their funnel names), rules
# a few each, and two days are live around midnight. Past it the least recently used
# go, and cost their SADD/EXPIRE again: never a wrong count.
SEEN_MAX = 20_000


class Seen:
    """What this worker already wrote to the day's report keys, so it does not write it
    again: TTLs set (`("ttl", key)`), where a dimension value counts (`(values_key,
    value)`: the value itself, or OTHER past the cap) and where a funnel name counts
    (`(hash, name, phase)`, engine/delivery/reports.py). Bounded, least recently used
    out.

    Only this worker's own writes are remembered, once their reply is in: a value
    another worker listed first costs this one a SADD (answered 0) the first time.
    Every key remembered carries its day, so yesterday's entries just age out.

    >>> seen = Seen(max_entries=2)
    >>> seen.put("a", 1); seen.put("b", 2); seen.get("a"); seen.put("c", 3)
    1
    >>> seen.get("b") is None, seen.get("a"), seen.get("c")
    (True, 1, 3)
    """

    __slots__ = ("_entries", "_max")

    def __init__(self, max_entries: int = SEEN_MAX) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: Hashable, value: Any) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def forget(self, key: Hashable) -> None:
        self._entries.pop(key, None)
