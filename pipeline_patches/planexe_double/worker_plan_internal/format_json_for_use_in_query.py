"""Compact JSON for embedding in a prompt, without the bookkeeping keys of a raw file."""
from __future__ import annotations

import json
from typing import Any, Union

JSONType = Union[dict[str, Any], list[Any]]

# Keys of a raw file that describe how it was made rather than what it says.
_BOOKKEEPING_KEYS = ("metadata", "query", "user_prompt", "system_prompt")


def format_json_for_use_in_query(d: JSONType) -> str:
    """One-line JSON of ``d``; for a dict, the bookkeeping keys are left out (the input is not changed)."""
    if isinstance(d, dict):
        return json.dumps({k: v for k, v in d.items() if k not in _BOOKKEEPING_KEYS}, separators=(",", ":"))
    if isinstance(d, list):
        return json.dumps(d, separators=(",", ":"))
    raise TypeError("format_json_for_use_in_query expects a dict or a list")
