"""One JSON object per line (LOG_FORMAT=json), with the ids a transition carries.

Engine code logs an event name as the message and its ids in `extra={"fields":
{...}}` (see lifecycle._log, sweeper.record_repaired). Every object has `job`,
`batch` and `tenant` keys when the record carries any engine fields (null when not
known), so a log query by id never depends on which code path wrote the line.
"""

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

ID_KEYS = ("job", "batch", "tenant")
_RESERVED = ("time", "level", "logger", "message")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": os.getpid(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry["event"] = record.msg if isinstance(record.msg, str) and not record.args else entry["message"]
            for key in ID_KEYS:
                entry[key] = None
            for key, value in fields.items():
                entry[f"field_{key}" if key in _RESERVED else key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `event` with its ids as structured fields (UUIDs and times become strings)."""
    logger.log(level, event, extra={"fields": {k: v if isinstance(v, (int, float, bool, type(None))) else str(v)
                                               for k, v in fields.items()}})
