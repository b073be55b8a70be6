"""IBM side: the IAM token endpoint and the Qiskit Runtime REST API (``/api/v1``).

Reply shapes follow what the real clients parse (qrmi's Rust models and qiskit-ibm-runtime):
see shared/notes/vendors.md. Sessions are what ``QuantumResource.acquire`` opens, so their
lifecycle (open -> active -> closed, and who closed them) is recorded faithfully.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from . import ibm_data, limits
from .auth import bearer, matches_any
from .catalog import BackendSpec, Vendor
from .context import ServerContext, VendorError, ctx_of, read_json
from .faults import FaultKind
from .jobs import Work
from .state import JobRecord, JobStatus, SessionRecord, SessionState

API_PREFIXES = ("/api/v1", "/experimental/api/v1")
AUDIENCE = "ibm-quantum"
# Versions at or after this date get device objects from GET /backends; older get names.
DEVICES_V2_API_VERSION = "2025-01-01"
PROGRAMS = ("sampler", "estimator", "executor")
SESSION_MODES = ("dedicated", "batch")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- auth ------------------------------------------------------------------------------------
async def iam_token(request: web.Request) -> web.Response:
    """``POST /identity/token``: trade an API key for a JWT-shaped access token."""
    ctx = ctx_of(request)
    form = await request.post()
    apikey = form.get("apikey")
    if not isinstance(apikey, str) or not matches_any(apikey, ctx.config.api_keys):
        # What IBM Cloud IAM answers for an unknown key (the key itself is never echoed).
        return web.json_response(
            {
                "errorCode": "BXNIM0415E",
                "errorMessage": "Provided API key could not be found.",
                "context": {"requestId": uuid.uuid4().hex},
            },
            status=400,
        )
    token = ctx.tokens.issue("iam-apikey", AUDIENCE)
    return web.json_response(
        {
            "access_token": token.access_token,
            "refresh_token": "not_supported",
            "token_type": "Bearer",
            "expires_in": token.expires_in,
            "expiration": token.expires_at,
            "scope": "ibm openid",
        }
    )


def _require_auth(ctx: ServerContext, request: web.Request) -> None:
    token = bearer(request.headers.get("Authorization"))
    if token is None or not ctx.tokens.verify(token, AUDIENCE):
        raise VendorError(401, "Unauthorized: a valid IAM bearer token is required")
    crn = request.headers.get("Service-CRN")
    if crn != ctx.config.service_crn:
        raise VendorError(403, "Forbidden: the Service-CRN header does not name this instance")


async def _enter(request: web.Request, backend: str | None = None) -> ServerContext:
    """Authenticate, then apply the faults scoped to ``backend``."""
    ctx = ctx_of(request)
    _require_auth(ctx, request)
    if backend is not None:
        await ctx.gate(request, backend)
    return ctx


async def _enter_job(request: web.Request) -> tuple[ServerContext, JobRecord]:
    ctx = await _enter(request)
    job = _job(ctx, request.match_info["id"])
    await ctx.gate(request, job.backend)
    return ctx, job


async def _enter_session(request: web.Request) -> tuple[ServerContext, SessionRecord]:
    ctx = await _enter(request)
    rec = ctx.state.session(request.match_info["id"])
    if rec is None:
        raise VendorError(404, f"Session {request.match_info['id']} not found")
    await ctx.gate(request, rec.backend)
    return ctx, _expire(ctx, rec)


def _spec(ctx: ServerContext, name: str) -> BackendSpec:
    spec = ctx.backend(Vendor.IBM, name)
    if spec is None:
        raise VendorError(404, f"Backend {name} not found")
    return spec


# ---- backends --------------------------------------------------------------------------------
def _queue_length(ctx: ServerContext, name: str) -> int:
    return sum(
        1 for j in ctx.state.jobs(vendor="ibm", backend=name) if j.status == JobStatus.QUEUED
    )


def _device(ctx: ServerContext, spec: BackendSpec) -> dict[str, Any]:
    off = ctx.offline_reason(spec.name)
    status = (
        {"name": "online", "reason": "available"}
        if off is None
        else {
            "name": off[0],
            "reason": off[1],
        }
    )
    return {
        "name": spec.name,
        "status": status,
        "is_simulator": False,
        "qubits": spec.qubits,
        "processor_type": ibm_data.processor_type(spec),
        "queue_length": _queue_length(ctx, spec.name),
        "wait_time_seconds": {"p50": 0, "p95": 0},
    }


async def list_backends(request: web.Request) -> web.Response:
    ctx = await _enter(request)
    specs = ctx.served(Vendor.IBM)
    version = request.headers.get("IBM-API-Version", "")
    if version and version >= DEVICES_V2_API_VERSION:
        return web.json_response({"devices": [_device(ctx, s) for s in specs]})
    return web.json_response({"devices": [s.name for s in specs]})


async def backend_status(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    ctx = await _enter(request, name)
    spec = _spec(ctx, name)
    off = ctx.offline_reason(spec.name)
    return web.json_response(
        {
            "state": off is None,
            "status": "active" if off is None else off[0],
            "message": "available" if off is None else off[1],
            "length_queue": _queue_length(ctx, spec.name),
            "backend_version": ibm_data.configuration(spec).get("backend_version", "0.0.0"),
        }
    )


async def backend_configuration(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    ctx = await _enter(request, name)
    return web.json_response(ibm_data.configuration(_spec(ctx, name)))


async def backend_properties(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    ctx = await _enter(request, name)
    return web.json_response(ibm_data.properties(_spec(ctx, name)))


async def instances_usage(request: web.Request) -> web.Response:
    await _enter(request)
    return web.json_response(
        {
            "usage_consumed_seconds": 0,
            "usage_limit_seconds": 10**9,
            "usage_allocation_seconds": 10**9,
            "usage_limit_reached": False,
            "usage_remaining_seconds": 10**9,
        }
    )


# ---- sessions --------------------------------------------------------------------------------
def _expire(ctx: ServerContext, rec: SessionRecord) -> SessionRecord:
    """Close a session whose max_ttl ran out (checked lazily on every read)."""
    if rec.is_open and time.time() - rec.created_at >= rec.max_ttl:
        for job in ctx.state.jobs(session_id=rec.id, pending=True):
            ctx.runner.cancel(job.id)
        return ctx.state.update_session(
            rec.id,
            state=SessionState.CLOSED,
            accepting_jobs=False,
            closed_at=time.time(),
            closed_by="expired",
        )
    return rec


def expire_sessions(ctx: ServerContext) -> None:
    """Close every session past its max_ttl (the server runs this periodically)."""
    for rec in ctx.state.open_sessions():
        _expire(ctx, rec)


def _run_seconds(job: JobRecord) -> float:
    """How long the job held the QPU: its usage figure (still counting while it runs)."""
    if job.started_at is None:
        return 0.0
    return (job.finished_at or time.time()) - job.started_at


def _usage_reported(ctx: ServerContext, backend: str) -> bool:
    return ctx.faults.find(FaultKind.NO_USAGE, backend) is None


def _session_usage(jobs: list[JobRecord]) -> float:
    """IBM's session usage: from the first job's start until the last job completes (a job
    still running counts up to now); 0 before any job started."""
    started = [j.started_at for j in jobs if j.started_at is not None]
    if not started:
        return 0.0
    ends = [j.finished_at or time.time() for j in jobs if j.started_at is not None]
    return max(ends) - min(started)


def _session_body(ctx: ServerContext, rec: SessionRecord) -> dict[str, Any]:
    elapsed = time.time() - rec.created_at
    jobs = ctx.state.jobs(session_id=rec.id)
    started = [j.started_at for j in jobs if j.started_at is not None]
    finished = [j.finished_at for j in jobs if j.finished_at is not None]
    usage = round(_session_usage(jobs), 3) if _usage_reported(ctx, rec.backend) else None
    return {
        "id": rec.id,
        "backend_name": rec.backend,
        "mode": rec.mode,
        "state": rec.state.value,
        "accepting_jobs": rec.accepting_jobs,
        "max_ttl": rec.max_ttl,
        "active_ttl": max(0, int(rec.max_ttl - elapsed)) if rec.is_open else 0,
        "interactive_ttl": 1,
        "started_at": _iso(rec.created_at),
        "activated_at": _iso(min(started)) if started else None,
        "closed_at": _iso(rec.closed_at),
        "last_job_started": _iso(max(started)) if started else None,
        "last_job_completed": _iso(max(finished)) if finished else None,
        "elapsed_time": usage,
        "user_id": "emulator-user",
        "timestamps": [{"status": "open", "timestamp": _iso(rec.created_at)}],
    }


async def create_session(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise VendorError(400, "session body must be a JSON object")
    name = body.get("backend") or body.get("backend_name")
    if not isinstance(name, str):
        raise VendorError(400, "session field 'backend' is required")
    ctx = await _enter(request, name)
    spec = _spec(ctx, name)
    mode = body.get("mode", "dedicated")
    if mode not in SESSION_MODES:
        raise VendorError(400, f"session field 'mode' must be one of {list(SESSION_MODES)}")
    max_ttl = body.get("max_ttl", 28800)
    if not isinstance(max_ttl, int) or max_ttl <= 0:
        raise VendorError(400, "session field 'max_ttl' must be a positive integer")
    rec = SessionRecord(
        id=uuid.uuid4().hex[:20],
        backend=spec.name,
        mode=mode,
        max_ttl=max_ttl,
        created_at=time.time(),
    )
    ctx.state.add_session(rec)
    return web.json_response(_session_body(ctx, rec))


def _session(ctx: ServerContext, session_id: str) -> SessionRecord:
    rec = ctx.state.session(session_id)
    if rec is None:
        raise VendorError(404, f"Session {session_id} not found")
    return _expire(ctx, rec)


async def get_session(request: web.Request) -> web.Response:
    ctx, rec = await _enter_session(request)
    return web.json_response(_session_body(ctx, rec))


async def patch_session(request: web.Request) -> web.Response:
    """``accepting_jobs: false`` closes the session once its jobs are done (release)."""
    ctx, rec = await _enter_session(request)
    sid = rec.id
    body = await read_json(request)
    accepting = body.get("accepting_jobs") if isinstance(body, dict) else None
    if not isinstance(accepting, bool):
        raise VendorError(400, "session field 'accepting_jobs' must be true or false")
    if not rec.is_open:
        return web.Response(status=204)
    if accepting:
        ctx.state.update_session(sid, accepting_jobs=True)
    elif ctx.state.jobs(session_id=sid, pending=True):
        ctx.state.update_session(sid, accepting_jobs=False)
    else:
        ctx.state.update_session(
            sid,
            accepting_jobs=False,
            state=SessionState.CLOSED,
            closed_at=time.time(),
            closed_by="release",
        )
    return web.Response(status=204)


async def close_session(request: web.Request) -> web.Response:
    """``DELETE /sessions/{id}/close``: cancel the session's queued and running jobs."""
    ctx, rec = await _enter_session(request)
    sid = rec.id
    if rec.is_open:
        # Close first, so the jobs' final-state hook does not record a "release".
        ctx.state.update_session(
            sid,
            accepting_jobs=False,
            state=SessionState.CLOSED,
            closed_at=time.time(),
            closed_by="cancel",
        )
        for job in ctx.state.jobs(session_id=sid, pending=True):
            ctx.runner.cancel(job.id)
    return web.Response(status=204)


def on_job_final(ctx: ServerContext, job: JobRecord) -> None:
    """Close a released session (accepting_jobs=false) once its last job is done."""
    if job.vendor != "ibm" or job.session_id is None:
        return
    rec = ctx.state.session(job.session_id)
    if rec is None or not rec.is_open or rec.accepting_jobs:
        return
    if not ctx.state.jobs(session_id=rec.id, pending=True):
        ctx.state.update_session(
            rec.id, state=SessionState.CLOSED, closed_at=time.time(), closed_by="release"
        )


# ---- jobs ------------------------------------------------------------------------------------
def _job_body(ctx: ServerContext, job: JobRecord, params: Any | None = None) -> dict[str, Any]:
    # qiskit-ibm-runtime reads ``state`` (a ran-too-long job is "Cancelled" with reason code
    # 1305 there); qrmi reads the top-level ``status``, which names the time-out itself.
    state_status = "Cancelled" if job.status == JobStatus.TIMED_OUT else job.status.ibm_status
    state: dict[str, Any] = {"status": state_status}
    if job.error:
        state["reason"] = job.error
        state["reason_code"] = job.reason_code or 1517
    run_seconds = _run_seconds(job)
    body: dict[str, Any] = {
        "id": job.id,
        "backend": job.backend,
        "state": state,
        "status": job.status.ibm_status,
        "program": {"id": job.program},
        "created": _iso(job.created_at),
        "cost": 0,
        "runtime": "",
        "tags": [],
        "session_id": job.session_id,
        "user_id": "emulator-user",
        "private": False,
        "estimated_running_time_seconds": 1.0,
    }
    if _usage_reported(ctx, job.backend):
        body["usage"] = {"quantum_seconds": round(run_seconds, 3), "seconds": round(run_seconds, 3)}
    if params is not None:
        body["params"] = params
    return body


def _job(ctx: ServerContext, job_id: str) -> JobRecord:
    job = ctx.state.job(job_id)
    if job is None or job.vendor != "ibm":
        raise VendorError(404, f"Job {job_id} not found")
    return job


async def create_job(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise VendorError(400, "job body must be a JSON object")
    name = body.get("backend")
    if not isinstance(name, str):
        raise VendorError(400, "job field 'backend' is required")
    ctx = await _enter(request, name)
    spec = _spec(ctx, name)
    program = body.get("program_id")
    if program not in PROGRAMS:
        raise VendorError(
            400,
            f"job field 'program_id' must be one of {list(PROGRAMS)} (emulator), got {program!r}",
        )
    params = body.get("params")
    if not isinstance(params, dict):
        raise VendorError(400, "job field 'params' must be an object")
    if program != "executor" and "pubs" not in params:
        raise VendorError(400, "job field 'params' must hold 'pubs'")
    off = ctx.offline_reason(spec.name)
    if off is not None:
        raise VendorError(400, f"Backend {spec.name} is {off[0]}: {off[1]}")
    _check_limits(ctx, spec, params)
    session_id = body.get("session_id")
    if session_id is not None:
        rec = _session(ctx, str(session_id))
        if rec.backend != spec.name:
            raise VendorError(400, f"Session {session_id} runs on {rec.backend}, not {spec.name}")
        if not rec.is_open or not rec.accepting_jobs:
            raise VendorError(409, f"Session {session_id} is closed and accepts no jobs")
        if rec.state == SessionState.OPEN:
            ctx.state.update_session(rec.id, state=SessionState.ACTIVE)
    job = JobRecord(
        id="e" + uuid.uuid4().hex[:19],
        vendor="ibm",
        backend=spec.name,
        program=str(program),
        created_at=time.time(),
        session_id=str(session_id) if session_id else None,
    )
    from .sim_qiskit import SimSettings, run_primitive

    settings = SimSettings(
        noise=ctx.config.noise,
        max_qubits=ctx.config.max_sim_qubits,
        max_exact_qubits=ctx.config.max_exact_qubits,
        mps_max_bond=ctx.config.mps_max_bond,
    )
    work = Work(
        run_primitive,
        (str(program), spec.source, spec.name, params, settings),
        _time_limit(ctx, body.get("cost")),
    )
    ctx.runner.submit(job, work)
    return web.json_response({"id": job.id, "backend": spec.name, "session_id": job.session_id})


def _time_limit(ctx: ServerContext, cost: Any) -> float:
    """The job's time limit: the emulator's, or the client's shorter ``cost`` (seconds)."""
    limit = ctx.config.max_job_seconds
    if isinstance(cost, int | float) and not isinstance(cost, bool) and cost > 0:
        limit = min(limit, float(cost))
    return limit


def _check_limits(ctx: ServerContext, spec: BackendSpec, params: dict[str, Any]) -> None:
    """Refuse at submission what the request body already shows is over a limit.

    400 with IBM's error body, which qrmi raises as ``InvalidInputError`` with the message
    and qiskit-ibm-runtime as ``IBMRuntimeError``: the user sees why at ``run()``.
    """
    cfg = ctx.config
    for shots in limits.ibm_shots(params, 0):
        if shots > cfg.max_shots:
            raise VendorError(
                400,
                f"The number of shots requested ({shots}) exceeds the maximum of "
                f"{cfg.max_shots} for {spec.name} (emulator --max-shots)",
            )
    width = limits.qasm_qubits(params)
    limit = cfg.max_sim_qubits or spec.qubits
    if width > limit:
        raise VendorError(
            400,
            f"The circuit acts on {width} qubits; this emulator is configured to simulate "
            f"at most {limit} on {spec.name} (emulator --max-qubits)",
        )
    if ctx.runner.queue_room(spec.name) == 0:
        raise VendorError(
            429,
            f"The queue of {spec.name} is full ({cfg.max_queued_jobs} jobs waiting): "
            "retry when a job has finished (emulator --max-queued-jobs)",
        )


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1", "yes")


async def list_jobs(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    q = request.query
    backend = q.get("backend")
    await _enter(request, backend)
    pending = True if _flag(q.get("pending")) else None
    jobs = ctx.state.jobs(
        vendor="ibm", backend=backend, session_id=q.get("session_id"), pending=pending
    )
    if q.get("program"):
        jobs = [j for j in jobs if j.program == q["program"]]
    jobs.sort(key=lambda j: j.created_at, reverse=q.get("sort", "DESC").upper() != "ASC")
    try:
        limit = int(q.get("limit", "200"))
        offset = int(q.get("offset", "0"))
    except ValueError:
        raise VendorError(400, "query 'limit' and 'offset' must be integers") from None
    page = jobs[offset : offset + limit]
    return web.json_response(
        {
            "jobs": [_job_body(ctx, j) for j in page],
            "count": len(jobs),
            "limit": limit,
            "offset": offset,
        }
    )


async def get_job(request: web.Request) -> web.Response:
    ctx, job = await _enter_job(request)
    if not job.status.final:
        await ctx.runner.settle([job.id], ctx.config.settle_seconds)
        job = _job(ctx, job.id)
    return web.json_response(_job_body(ctx, job))


async def job_results(request: web.Request) -> web.Response:
    ctx, job = await _enter_job(request)
    result = ctx.state.result(job.id)
    if job.status in (JobStatus.FAILED, JobStatus.TIMED_OUT):
        # The real service answers a failed job's results with its error message, which
        # qiskit-ibm-runtime shows to the user.
        return web.Response(text=job.error or "job failed", content_type="text/plain")
    if job.status != JobStatus.COMPLETED or result is None:
        raise VendorError(404, f"Job {job.id} has no results (status {job.status.ibm_status})")
    # text/plain: qrmi reads the body as a string (with application/json it fails).
    return web.Response(text=result, content_type="text/plain")


async def cancel_job(request: web.Request) -> web.Response:
    ctx, job = await _enter_job(request)
    if not ctx.runner.cancel(job.id):
        raise VendorError(409, f"Job {job.id} is already in a final state")
    return web.Response(status=204)


async def delete_job(request: web.Request) -> web.Response:
    ctx, job = await _enter_job(request)
    ctx.runner.cancel(job.id)
    return web.Response(status=204)


async def job_logs(request: web.Request) -> web.Response:
    ctx, job = await _enter_job(request)
    return web.Response(
        text="\n".join(ctx.state.job_logs(job.id)) + "\n", content_type="text/plain"
    )


async def job_metrics(request: web.Request) -> web.Response:
    ctx, job = await _enter_job(request)
    run_seconds = round(_run_seconds(job), 3)
    body: dict[str, Any] = {
        "timestamps": {
            "created": _iso(job.created_at),
            "running": _iso(job.started_at),
            "finished": _iso(job.finished_at),
        },
        "qiskit_version": "",
    }
    if _usage_reported(ctx, job.backend):
        body["bss"] = {"seconds": run_seconds}
        # qiskit-ibm-runtime's RuntimeJobV2.usage() reads qpu_charge_time_seconds and status.
        body["usage"] = {
            "quantum_seconds": run_seconds,
            "seconds": run_seconds,
            "qpu_charge_time_seconds": run_seconds,
            "status": "complete" if job.finished_at is not None else "pending",
        }
    return web.json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/identity/token", iam_token)
    for p in API_PREFIXES:
        app.router.add_get(f"{p}/backends", list_backends)
        app.router.add_get(f"{p}/backends/{{name}}/status", backend_status)
        app.router.add_get(f"{p}/backends/{{name}}/configuration", backend_configuration)
        app.router.add_get(f"{p}/backends/{{name}}/properties", backend_properties)
        app.router.add_get(f"{p}/instances/usage", instances_usage)
        app.router.add_post(f"{p}/sessions", create_session)
        app.router.add_get(f"{p}/sessions/{{id}}", get_session)
        app.router.add_patch(f"{p}/sessions/{{id}}", patch_session)
        app.router.add_delete(f"{p}/sessions/{{id}}/close", close_session)
        app.router.add_post(f"{p}/jobs", create_job)
        app.router.add_get(f"{p}/jobs", list_jobs)
        app.router.add_get(f"{p}/jobs/{{id}}", get_job)
        app.router.add_delete(f"{p}/jobs/{{id}}", delete_job)
        app.router.add_get(f"{p}/jobs/{{id}}/results", job_results)
        app.router.add_post(f"{p}/jobs/{{id}}/cancel", cancel_job)
        app.router.add_get(f"{p}/jobs/{{id}}/logs", job_logs)
        app.router.add_get(f"{p}/jobs/{{id}}/metrics", job_metrics)
