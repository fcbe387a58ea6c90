"""What the Segment and Snowplow mappings share: reading a configured property path
out of a vendor's event, and naming the Ringback prop a refusal is about.

Both translate a vendor's event into one of Ringback's (`engine.ingest.segment`,
`engine.ingest.snowplow`) by config: a prop is read from a dotted path of the
vendor's data, and a mapped event that /v1/events would refuse is refused with the
path of the vendor field it came from, so a bank's tracking team sees which of its
own fields is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["MISSING", "lookup", "props_path"]

MISSING: Final = object()  # a path that leads nowhere, or to null

_MISSING_FIELD = re.compile(r"Object missing required field `([^`]+)`")


def lookup(data: Mapping[str, Any], path: str) -> Any:
    """`loan.amount` -> data["loan"]["amount"]; `MISSING` when absent or null.

    >>> lookup({"loan": {"amount": 9000}}, "loan.amount"), lookup({}, "loan") is MISSING
    (9000, True)
    """
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return MISSING if value is None else value


def props_path(message: str, path: str) -> str:
    """The path of the mapped event's prop a validation error is about: msgspec says a
    missing prop at `$.props` ("Object missing required field `amount`"); name it.

    >>> props_path("Object missing required field `amount`", "$.props")
    '$.props.amount'
    >>> props_path("Expected `float`, got `str`", "$.props.amount")
    '$.props.amount'
    """
    if path == "$.props" and (missing := _MISSING_FIELD.fullmatch(message)):
        return f"$.props.{missing[1]}"
    return path
