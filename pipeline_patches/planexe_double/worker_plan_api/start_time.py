"""The start-time file (``001-1-start_time.json``): when the plan was started, in UTC and local time."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone


@dataclass
class StartTime:
    server_iso_utc: str
    server_iso_local: str
    server_timezone_name: str

    @staticmethod
    def create(local_time: datetime) -> "StartTime":
        local = local_time.astimezone().replace(microsecond=0)
        return StartTime(
            server_iso_utc=local.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            server_iso_local=local.isoformat(),
            server_timezone_name=local.tzname() or "unknown",
        )

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=2)
