"""The emulator's own API under ``/_emulator``: state introspection, faults, reset.

For tests and demos that run the emulator as a separate process. It is unauthenticated and
bypasses the fault gate (a hang must stay clearable), which is why the server binds to
loopback by default.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web

from . import catalog
from .context import VendorError, ctx_of, read_json
from .faults import Fault, FaultKind

PREFIX = "/_emulator"


async def health(request: web.Request) -> web.Response:
    """Liveness, plus whether the simulation workers are warm and how many jobs run."""
    ctx = ctx_of(request)
    pool = ctx.runner.pool
    return web.json_response(
        {"ok": True, "workers_ready": pool.ready.is_set(), "running_jobs": pool.running}
    )


async def get_state(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    snap = ctx.state.snapshot()
    snap["faults"] = [f.to_dict() for f in ctx.faults.active()]
    return web.json_response(snap)


async def get_sessions(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    open_only = request.query.get("open", "").lower() in ("1", "true", "yes")
    sessions = ctx.state.sessions(request.query.get("backend"), open_only=open_only)
    return web.json_response(
        {"sessions": [s.to_dict() for s in sessions], "counts": ctx.state.session_counts()}
    )


async def get_jobs(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    jobs = ctx.state.jobs(vendor=request.query.get("vendor"), backend=request.query.get("backend"))
    return web.json_response({"jobs": [j.to_dict() for j in jobs]})


async def get_faults(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    return web.json_response({"faults": [f.to_dict() for f in ctx.faults.active()]})


async def post_fault(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    try:
        fault = Fault.from_dict(await read_json(request))
    except ValueError as exc:
        raise VendorError(400, str(exc)) from None
    if fault.backend is not None and fault.backend not in catalog.names():
        raise VendorError(
            400, f"fault field 'backend': {catalog.UnknownBackendError(fault.backend)}"
        )
    ctx.faults.set(fault)
    return web.json_response(fault.to_dict(), status=201)


async def delete_faults(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    kind_text = request.query.get("kind")
    try:
        kind = FaultKind(kind_text) if kind_text else None
    except ValueError:
        raise VendorError(
            400, f"query 'kind' must be one of {[k.value for k in FaultKind]}"
        ) from None
    removed = ctx.faults.clear(kind, request.query.get("backend"))
    return web.json_response({"removed": removed})


def _backend_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if name not in catalog.names():
        raise VendorError(404, str(catalog.UnknownBackendError(name)))
    return name


def _take_down(request: web.Request, name: str, reason: str, *, paused: bool) -> None:
    fault = {"kind": "offline", "backend": name, "reason": reason, "paused": paused}
    ctx_of(request).faults.set(Fault.from_dict(fault))


async def set_online(request: web.Request) -> web.Response:
    """``{"online": false, "reason": "...", "paused": false}`` flips a backend's health."""
    name = _backend_name(request)
    body: Any = await read_json(request)
    online = body.get("online") if isinstance(body, dict) else None
    if not isinstance(online, bool):
        raise VendorError(400, "field 'online' must be true or false")
    if online:
        ctx_of(request).faults.clear(FaultKind.OFFLINE, name)
    else:
        reason, paused = str(body.get("reason", "")), bool(body.get("paused", False))
        _take_down(request, name, reason, paused=paused)
    return web.json_response({"backend": name, "online": online})


async def pause(request: web.Request) -> web.Response:
    """``{"reason": "..."}``: the vendor pauses the backend (maintenance, calibration).

    Each API then says so as the vendor does: IBM's device list ``status`` ``{"name":
    "paused", "reason"}`` (what qrmi's ``status()`` reads) and ``/backends/{name}/status``
    ``state: false, status: "paused", message`` (qiskit-ibm-runtime's ``operational`` /
    ``status_msg``); Pasqal's device ``status: "MAINTENANCE"``, ``availability:
    "INACTIVE"``. New jobs are refused until ``resume``.
    """
    name = _backend_name(request)
    body: Any = await read_json(request)
    reason = body.get("reason", "") if isinstance(body, dict) else None
    if not isinstance(reason, str):
        raise VendorError(400, "field 'reason' must be a string (the vendor's words)")
    _take_down(request, name, reason, paused=True)
    return web.json_response({"backend": name, "paused": True, "reason": reason})


async def resume(request: web.Request) -> web.Response:
    """End a pause (or an offline spell): the backend reports online again."""
    name = _backend_name(request)
    ctx_of(request).faults.clear(FaultKind.OFFLINE, name)
    return web.json_response({"backend": name, "paused": False})


async def reset(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    await ctx.runner.cancel_all()
    ctx.state.reset()
    ctx.faults.clear()
    return web.json_response({"reset": True})


async def get_catalog(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    return web.json_response({"backends": [asdict(s) for s in ctx.config.served()]})


async def get_requests(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    return web.json_response(
        {"requests": [asdict(r) for r in ctx.state.requests(request.query.get("path"))]}
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{PREFIX}/health", health)
    r.add_get(f"{PREFIX}/state", get_state)
    r.add_get(f"{PREFIX}/sessions", get_sessions)
    r.add_get(f"{PREFIX}/jobs", get_jobs)
    r.add_get(f"{PREFIX}/faults", get_faults)
    r.add_post(f"{PREFIX}/faults", post_fault)
    r.add_delete(f"{PREFIX}/faults", delete_faults)
    r.add_post(f"{PREFIX}/backends/{{name}}/online", set_online)
    r.add_post(f"{PREFIX}/backends/{{name}}/pause", pause)
    r.add_post(f"{PREFIX}/backends/{{name}}/resume", resume)
    r.add_post(f"{PREFIX}/reset", reset)
    r.add_get(f"{PREFIX}/catalog", get_catalog)
    r.add_get(f"{PREFIX}/requests", get_requests)
