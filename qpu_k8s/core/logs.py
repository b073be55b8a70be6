"""Structured (JSON lines) logging with secret redaction on every record.

Each agent calls :func:`setup` once. The redaction runs in a handler filter on the final,
formatted text, so nothing logged through any library (qrmi forwards to ``logging``, kopf,
grpc) can carry a registered credential value.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from qpu_k8s.core.credentials import redact

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime"}


_PLAIN = (int, float, bool, type(None))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg and any ``extra=`` fields."""

    # The formatted second of the last record: a busy agent logs many in the same one.
    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        second, text = self._second
        if int(record.created) != second:
            second = int(record.created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        out: dict[str, Any] = {
            "ts": f"{text}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD and not key.startswith("_"):
                out[key] = value if isinstance(value, _PLAIN) else str(value)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, default=str))


class TextFormatter(logging.Formatter):
    """Human-readable lines for the demo and terminals, redacted as well."""

    def format(self, record: logging.LogRecord) -> str:
        extras = {k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")}
        text = super().format(record)
        if extras:
            text += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return redact(text)


def setup(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Configure the root logger (idempotent: replaces our previous handler)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_qpu_k8s", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._qpu_k8s = True  # type: ignore[attr-defined]
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Neither formatter prints the caller's file and line, the thread or the process, so a
    # record need not look them up: the Python logging HOWTO's "Optimization" settings,
    # which take a stack walk and two lookups off every log call (Allocate logs one).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Vendor HTTP stacks are chatty at debug and would log URLs with tokens in query strings.
    for noisy in ("urllib3", "aiohttp.access", "kubernetes.client.rest"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
