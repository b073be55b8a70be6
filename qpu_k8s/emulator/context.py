"""What every route handler shares: settings, state, faults, tokens, the job runner.

Also the fault gate (``gate``) and the vendor-shaped error replies, so the IBM and Pasqal
route modules stay about their own API.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from . import catalog
from .auth import TokenIssuer
from .config import EmulatorConfig
from .faults import FaultKind, FaultRegistry
from .jobs import JobRunner
from .state import EmulatorState

VendorName = Literal["ibm", "pasqal", "admin"]

# Poll step of a hanging request: how soon it notices the hang was cleared.
_HANG_STEP_SECONDS = 0.05


class ConnectionDropped(Exception):
    """The server is stopping while a request hangs: drop the connection, send nothing."""


def error_response(vendor: VendorName, status: int, message: str) -> web.Response:
    """An error body shaped like the vendor's own."""
    body: dict[str, Any]
    if vendor == "pasqal":
        body = {"status": "fail", "code": status, "message": message, "data": {}}
    else:
        body = {
            "errors": [{"code": status, "message": message, "more_info": ""}],
            "trace": "",
            "status_code": status,
        }
    return web.json_response(body, status=status)


class VendorError(Exception):
    """Raised by handlers; the middleware turns it into ``error_response``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ServerContext:
    """Lives on the server's event loop; handlers reach it through ``CTX``."""

    config: EmulatorConfig
    state: EmulatorState
    faults: FaultRegistry
    tokens: TokenIssuer
    runner: JobRunner
    stopping: asyncio.Event
    base_url: str = ""
    # Pulser device specs by device source, built once in a worker process.
    device_specs: dict[str, str] = field(default_factory=dict)

    def served(self, vendor: catalog.Vendor) -> tuple[catalog.BackendSpec, ...]:
        return tuple(s for s in self.config.served() if s.vendor == vendor)

    def backend(self, vendor: catalog.Vendor, name: str) -> catalog.BackendSpec | None:
        for spec in self.served(vendor):
            if spec.name == name:
                return spec
        return None

    def offline_reason(self, name: str) -> tuple[str, str] | None:
        """(status word, reason) when the backend is made unavailable, else None."""
        fault = self.faults.find(FaultKind.OFFLINE, name)
        if fault is None:
            return None
        word = "paused" if fault.paused else "offline"
        return word, fault.reason or f"backend {word} (emulator fault)"

    async def gate(self, request: web.Request, backend: str | None) -> None:
        """Apply the faults that match this request.

        ``backend=None`` applies the global faults (the middleware does that for every
        vendor request); a name applies the faults scoped to that backend only.
        """

        def lookup(kind: FaultKind) -> Any:
            if backend is None:
                return self.faults.find(kind, None)
            return self.faults.find_scoped(kind, backend)

        if lookup(FaultKind.HANG) is not None:
            while lookup(FaultKind.HANG) is not None:
                if self.stopping.is_set():
                    raise ConnectionDropped
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), _HANG_STEP_SECONDS)
        slow = lookup(FaultKind.SLOW)
        if slow is not None and slow.seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), slow.seconds)
            if self.stopping.is_set():
                raise ConnectionDropped
        if lookup(FaultKind.REJECT_AUTH) is not None:
            raise VendorError(401, "Unauthorized: credentials rejected (emulator fault)")
        err = lookup(FaultKind.ERROR5XX)
        if err is not None:
            raise VendorError(err.status, err.reason or "Service Unavailable (emulator fault)")


CTX: web.AppKey[ServerContext] = web.AppKey("ctx", ServerContext)


def ctx_of(request: web.Request) -> ServerContext:
    return request.app[CTX]


async def read_json(request: web.Request) -> Any:
    """The JSON body, gunzipped when ``Content-Encoding: gzip`` (pasqal-cloud sends that)."""
    raw = await request.read()
    # aiohttp may already have inflated it; the gzip magic number tells.
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except OSError as exc:
            raise VendorError(400, f"body is not valid gzip: {exc}") from None
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise VendorError(400, f"body is not valid JSON: {exc}") from None
