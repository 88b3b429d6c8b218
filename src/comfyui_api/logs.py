"""Structured JSON logs, one object per line, with the request id of the current request."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# LogRecord attributes that are not user-supplied `extra` fields.
# uvicorn's `color_message` duplicates `msg` with terminal colour codes.
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "critical": logging.CRITICAL,
}


_THIRD_PARTY_LOGGERS = (
    "httpx",
    "httpcore",
    "websockets",
    "boto3",
    "botocore",
    "s3transfer",
    "urllib3",
    "azure",
    "huggingface_hub",
    "filelock",
    # Logs every statement of the job store with its parameters (the records' delivery options).
    "aiosqlite",
    # Log every message published or received, bodies included (job requests, sealed secrets), and every statement.
    "aio_pika",
    "aiormq",
    "asyncpg",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key != "request_id":
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Per-request HTTP client chatter would drown the request logs, and at debug the SDKs print request signatures
    # and header dumps (Azure's policy logs headers even at info): they stay at WARNING unless LOG_LEVEL=trace.
    third_party = logging.DEBUG if level == "trace" else max(logging.WARNING, root.level)
    for name in _THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(third_party)
