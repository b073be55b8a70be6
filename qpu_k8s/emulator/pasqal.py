"""Pasqal side: the OAuth token endpoint and the Pasqal Cloud core API (``/core-fast``).

Serves what qrmi's pasqal-cloud resource and the pasqal-cloud SDK call (see
shared/notes/vendors.md): device status and specs, batches of pulser sequences (gzip
bodies accepted), jobs, results through a pre-signed results link.
"""

from __future__ import annotations

import contextlib
import hmac
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from . import limits, sim_pulser
from .auth import bearer, matches_any
from .catalog import BackendSpec, Vendor
from .context import ServerContext, VendorError, ctx_of, read_json
from .jobs import Work
from .state import BatchRecord, JobRecord, JobStatus

CORE = "/core-fast"
AUDIENCE = "pasqal-cloud"
RESULTS_PATH = "/_results/pasqal"
PAGE_LIMIT = 100


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _data(data: Any, status: int = 200) -> web.Response:
    return web.json_response({"status": "success", "code": status, "data": data}, status=status)


# ---- auth ------------------------------------------------------------------------------------
async def oauth_token(request: web.Request) -> web.Response:
    """Client-credentials and auth0 password-realm grants, form or JSON encoded."""
    ctx = ctx_of(request)
    if request.content_type == "application/json":
        body = await read_json(request)
        form = {k: str(v) for k, v in body.items()} if isinstance(body, dict) else {}
    else:
        form = {k: str(v) for k, v in (await request.post()).items()}
    ok = False
    if "client_secret" in form:
        pair = f"{form.get('client_id', '')}\0{form['client_secret']}"
        ok = matches_any(pair, {f"{i}\0{s}" for i, s in ctx.config.pasqal_clients})
    elif "password" in form:
        pair = f"{form.get('username', '')}\0{form['password']}"
        ok = matches_any(pair, {f"{u}\0{p}" for u, p in ctx.config.pasqal_users})
    if not ok:
        return web.json_response(
            {"error": "access_denied", "error_description": "Wrong credentials."}, status=401
        )
    token = ctx.tokens.issue("pasqal-user", AUDIENCE)
    return web.json_response(
        {
            "access_token": token.access_token,
            "token_type": "Bearer",
            "expires_in": token.expires_in,
            "scope": "openid profile email",
        }
    )


def _authenticated(ctx: ServerContext, request: web.Request) -> None:
    token = bearer(request.headers.get("Authorization"))
    if token is None:
        raise VendorError(401, "Unauthorized: a bearer token is required")
    if ctx.tokens.verify(token, AUDIENCE):
        return
    if ctx.config.pasqal_tokens and matches_any(token, ctx.config.pasqal_tokens):
        return
    raise VendorError(401, "Unauthorized: the bearer token was not accepted")


def _device(ctx: ServerContext, name: str) -> BackendSpec:
    spec = ctx.backend(Vendor.PASQAL, name)
    if spec is None:
        raise VendorError(404, f"device type {name} not found")
    return spec


# ---- devices ---------------------------------------------------------------------------------
def _device_body(ctx: ServerContext, spec: BackendSpec) -> dict[str, Any]:
    off = ctx.offline_reason(spec.name)
    if off is None:
        status, availability = "UP", "ACTIVE"
    else:
        status, availability = ("MAINTENANCE" if off[0] == "paused" else "DOWN"), "INACTIVE"
    pending = sum(
        1 for j in ctx.state.jobs(vendor="pasqal", backend=spec.name) if not j.status.final
    )
    return {
        "id": spec.name.lower(),
        "device_type": spec.name,
        "name": spec.name,
        "status": status,
        "availability": availability,
        "status_reason": None if off is None else off[1],
        "pending_jobs": pending,
        "is_emulator": spec.simulator,
    }


async def devices(request: web.Request) -> web.Response:
    """``GET /api/v1/devices[?device_type=DT]``: status, no auth (as qrmi calls it)."""
    ctx = ctx_of(request)
    wanted = request.query.get("device_type")
    if wanted is not None:
        await ctx.gate(request, wanted)
    specs = [s for s in ctx.served(Vendor.PASQAL) if wanted is None or s.name == wanted]
    return _data([_device_body(ctx, s) for s in specs])


SPECS_TIMEOUT_SECONDS = 120.0


async def _specs(ctx: ServerContext, spec: BackendSpec) -> str:
    """The device's pulser specs, built once in a worker process (pulser is not loaded here)."""
    cached = ctx.device_specs.get(spec.source)
    if cached is None:
        try:
            cached = await ctx.runner.call(
                sim_pulser.device_specs, spec.source, limit=SPECS_TIMEOUT_SECONDS
            )
        except Exception as exc:
            raise VendorError(503, f"device specs of {spec.name} are unavailable: {exc}") from exc
        ctx.device_specs[spec.source] = str(cached)
    return str(cached)


async def prefetch_specs(ctx: ServerContext) -> None:
    """Build every served device's specs as soon as the workers are up (at start-up)."""
    for spec in ctx.served(Vendor.PASQAL):
        with contextlib.suppress(VendorError):
            await _specs(ctx, spec)


async def public_specs(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    out = [
        {"device_type": s.name, "specs": await _specs(ctx, s)} for s in ctx.served(Vendor.PASQAL)
    ]
    return _data(out)


async def all_specs(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    _authenticated(ctx, request)
    return _data({s.name: await _specs(ctx, s) for s in ctx.served(Vendor.PASQAL)})


async def device_specs(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    _authenticated(ctx, request)
    name = request.match_info["device_type"]
    await ctx.gate(request, name)
    spec = _device(ctx, name)
    return _data({"device_type": spec.name, "specs": await _specs(ctx, spec)})


# ---- batches and jobs ------------------------------------------------------------------------
def _batch_status(ctx: ServerContext, batch: BatchRecord) -> tuple[str, dict[str, int]]:
    jobs = [j for j in (ctx.state.job(i) for i in batch.job_ids) if j is not None]
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.status.pasqal_status] = counts.get(j.status.pasqal_status, 0) + 1
    statuses = {j.status for j in jobs}
    if jobs and all(s.final for s in statuses):
        if statuses == {JobStatus.CANCELLED} or batch.cancelled:
            status = "CANCELED"
        elif statuses & {JobStatus.FAILED, JobStatus.TIMED_OUT}:
            status = "ERROR"  # not TIMED_OUT: see state._PASQAL_STATUS
        else:
            status = "DONE"
    elif statuses <= {JobStatus.QUEUED}:
        status = "PENDING"
    else:
        status = "RUNNING"
    return status, counts


def _job_body(job: JobRecord, project_id: str, order: int, variables: Any = None) -> dict[str, Any]:
    return {
        "id": job.id,
        "batch_id": job.batch_id,
        "project_id": project_id,
        "status": job.status.pasqal_status,
        "runs": job.shots,
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.finished_at or job.started_at or job.created_at),
        "start_timestamp": _iso(job.started_at),
        "end_timestamp": _iso(job.finished_at),
        "errors": [job.error] if job.error else [],
        "variables": variables,
        "parent_id": None,
        "creation_order": order,
    }


def _batch_body(ctx: ServerContext, batch: BatchRecord, sequence: str | None) -> dict[str, Any]:
    status, counts = _batch_status(ctx, batch)
    jobs = [j for j in (ctx.state.job(i) for i in batch.job_ids) if j is not None]
    finished = [j.finished_at for j in jobs if j.finished_at is not None]
    started = [j.started_at for j in jobs if j.started_at is not None]
    body: dict[str, Any] = {
        "id": batch.id,
        "status": status,
        "open": batch.open,
        "complete": not batch.open,
        "created_at": _iso(batch.created_at),
        "updated_at": _iso(max(finished) if finished else batch.created_at),
        "start_datetime": _iso(min(started)) if started else None,
        "end_datetime": _iso(max(finished)) if finished and status != "RUNNING" else None,
        "device_type": batch.device_type,
        "project_id": batch.project_id,
        "user_id": "emulator-user",
        "jobs": [_job_body(j, batch.project_id, i) for i, j in enumerate(jobs)],
        "job_ids": [j.id for j in jobs],
        "jobs_count": len(jobs),
        "jobs_count_per_status": counts,
        "device_status": "UP",
    }
    if sequence is not None:
        body["sequence_builder"] = sequence
    return body


def _batch(ctx: ServerContext, batch_id: str) -> BatchRecord:
    batch = ctx.state.batch(batch_id)
    if batch is None:
        raise VendorError(404, f"batch {batch_id} not found")
    return batch


def _pjob(ctx: ServerContext, job_id: str) -> JobRecord:
    job = ctx.state.job(job_id)
    if job is None or job.vendor != "pasqal":
        raise VendorError(404, f"job {job_id} not found")
    return job


async def _enter_batch(request: web.Request) -> tuple[ServerContext, BatchRecord]:
    ctx = ctx_of(request)
    _authenticated(ctx, request)
    batch = _batch(ctx, request.match_info["id"])
    await ctx.gate(request, batch.device_type)
    return ctx, batch


async def _enter_job(request: web.Request) -> tuple[ServerContext, JobRecord]:
    ctx = ctx_of(request)
    _authenticated(ctx, request)
    job = _pjob(ctx, request.match_info["id"])
    await ctx.gate(request, job.backend)
    return ctx, job


async def create_batch(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    _authenticated(ctx, request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise VendorError(400, "batch body must be a JSON object")
    if "setup" in body and "hamiltonian" in body:
        raise VendorError(501, "CUDA-Q jobs are not supported by the emulator")
    device_type = body.get("device_type")
    if not isinstance(device_type, str):
        raise VendorError(400, "batch field 'device_type' is required")
    await ctx.gate(request, device_type)
    spec = _device(ctx, device_type)
    project = body.get("project_id")
    if project not in ctx.config.pasqal_projects:
        raise VendorError(403, "batch field 'project_id' names a project you cannot use")
    if body.get("open"):
        raise VendorError(400, "open batches are not supported by the emulator; send open=false")
    sequence = body.get("sequence_builder")
    jobs = body.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise VendorError(400, "batch field 'jobs' must be a non-empty list of {runs: N}")
    off = ctx.offline_reason(spec.name)
    if off is not None:
        raise VendorError(400, f"device {spec.name} is not available: {off[1]}")
    batch_id = str(uuid.uuid4())
    now = time.time()
    records: list[tuple[JobRecord, str, Any]] = []
    for i, job in enumerate(jobs):
        if not isinstance(job, dict) or not isinstance(job.get("runs"), int):
            raise VendorError(400, f"batch field 'jobs[{i}].runs' must be an integer")
        job_seq = job.get("sequence") or sequence
        if not isinstance(job_seq, str):
            raise VendorError(400, f"job {i} has no sequence: set 'sequence_builder'")
        _check_job_limits(ctx, spec, i, job["runs"], job_seq)
        if not spec.simulator and limits.sequence_without_layout(job_seq):
            # What the QPU demands (pulser's QPUBackend checks it on the client too).
            raise VendorError(
                400,
                f"job {i}: '{spec.name}' requires the sequence's register to be defined "
                "from a `RegisterLayout` (e.g. Register.with_automatic_layout(device))",
            )
        rec = JobRecord(
            id=str(uuid.uuid4()),
            vendor="pasqal",
            backend=spec.name,
            program="pulser",
            created_at=now,
            batch_id=batch_id,
            shots=job["runs"],
        )
        records.append((rec, job_seq, job.get("variables")))
    room = ctx.runner.queue_room(spec.name)
    if room is not None and room < len(records):
        raise VendorError(
            429,
            f"the queue of {spec.name} is full ({ctx.config.max_queued_jobs} jobs waiting): "
            "retry when a job has finished (emulator --max-queued-jobs)",
        )
    batch = BatchRecord(
        id=batch_id,
        device_type=spec.name,
        project_id=str(project),
        created_at=now,
        job_ids=tuple(r.id for r, _, _ in records),
        sequence=sequence if isinstance(sequence, str) else None,
    )
    ctx.state.add_batch(batch)
    required = None if spec.simulator else spec.source
    for rec, seq, variables in records:
        work = Work(
            sim_pulser.run_job,
            (seq, rec.shots or 0, variables, required, ctx.config.max_sim_atoms),
            ctx.config.max_job_seconds,
        )
        ctx.runner.submit(rec, work)
    return _data(_batch_body(ctx, batch, None))


def _check_job_limits(ctx: ServerContext, spec: BackendSpec, i: int, runs: int, seq: str) -> None:
    """Refuse at submission a job whose runs or atoms are over the emulator's limits."""
    if runs > ctx.config.max_shots:
        raise VendorError(
            400,
            f"job {i} asks for {runs} runs; {spec.name} takes at most {ctx.config.max_shots} "
            "(emulator --max-shots)",
        )
    atoms = limits.sequence_atoms(seq)
    if atoms is not None and atoms > ctx.config.max_sim_atoms:
        raise VendorError(
            400,
            f"job {i}: the sequence has {atoms} atoms; this emulator simulates at most "
            f"{ctx.config.max_sim_atoms} (emulator --max-atoms)",
        )


async def _settled_batch(ctx: ServerContext, batch: BatchRecord) -> BatchRecord:
    await ctx.runner.settle(list(batch.job_ids), ctx.config.settle_seconds)
    return _batch(ctx, batch.id)


async def get_batch(request: web.Request) -> web.Response:
    ctx, batch = await _enter_batch(request)
    batch = await _settled_batch(ctx, batch)
    return _data(_batch_body(ctx, batch, batch.sequence))


async def batch_status(request: web.Request) -> web.Response:
    ctx, batch = await _enter_batch(request)
    batch = await _settled_batch(ctx, batch)
    status, counts = _batch_status(ctx, batch)
    return _data({"id": batch.id, "status": status, "jobs_count_per_status": counts})


async def full_results(request: web.Request) -> web.Response:
    ctx, batch = await _enter_batch(request)
    out = {}
    for job_id in batch.job_ids:
        result = ctx.state.result(job_id)
        if result is not None:
            out[job_id] = result
    return _data(out)


async def cancel_batch(request: web.Request) -> web.Response:
    ctx, batch = await _enter_batch(request)
    for job_id in batch.job_ids:
        ctx.runner.cancel(job_id)
    batch = ctx.state.update_batch(batch.id, cancelled=True)
    return _data(_batch_body(ctx, batch, None))


async def complete_batch(request: web.Request) -> web.Response:
    ctx, batch = await _enter_batch(request)
    batch = ctx.state.update_batch(batch.id, open=False)
    return _data(_batch_body(ctx, batch, None))


def _job_reply(ctx: ServerContext, job: JobRecord) -> dict[str, Any]:
    batch = ctx.state.batch(job.batch_id or "")
    order = batch.job_ids.index(job.id) if batch and job.id in batch.job_ids else 0
    return _job_body(job, batch.project_id if batch else "", order)


async def get_job(request: web.Request) -> web.Response:
    ctx, job = await _enter_job(request)
    await ctx.runner.settle([job.id], ctx.config.settle_seconds)
    return _data(_job_reply(ctx, _pjob(ctx, job.id)))


async def job_status(request: web.Request) -> web.Response:
    ctx, job = await _enter_job(request)
    await ctx.runner.settle([job.id], ctx.config.settle_seconds)
    return _data({"id": job.id, "status": _pjob(ctx, job.id).status.pasqal_status})


async def list_jobs(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    _authenticated(ctx, request)
    batch_id = request.query.get("batch_id")
    jobs = [
        j for j in ctx.state.jobs(vendor="pasqal") if batch_id is None or j.batch_id == batch_id
    ]
    jobs.sort(key=lambda j: j.created_at)
    try:
        offset = int(request.query.get("offset", "0"))
        limit = int(request.query.get("limit", str(PAGE_LIMIT)))
    except ValueError:
        raise VendorError(400, "query 'offset' and 'limit' must be integers") from None
    page = jobs[offset : offset + limit]
    return web.json_response(
        {
            "status": "success",
            "code": 200,
            "data": [_job_reply(ctx, j) for j in page],
            "pagination": {"total": len(jobs), "start": offset, "end": offset + len(page)},
        }
    )


async def cancel_job(request: web.Request) -> web.Response:
    ctx, job = await _enter_job(request)
    ctx.runner.cancel(job.id)
    return _data(_job_reply(ctx, _pjob(ctx, job.id)))


def _link_sig(ctx: ServerContext, job_id: str) -> str:
    return ctx.tokens.sign(f"results:{job_id}")


async def results_link(request: web.Request) -> web.Response:
    ctx, job = await _enter_job(request)
    if ctx.state.result(job.id) is None:
        raise VendorError(404, f"job {job.id} has no results (status {job.status.pasqal_status})")
    origin = str(request.url.origin())
    link = f"{origin}{RESULTS_PATH}/{job.id}?signature={_link_sig(ctx, job.id)}"
    return _data({"results_link": link})


async def results_download(request: web.Request) -> web.Response:
    """The target of a results link (S3 on the real cloud): no auth, a signed URL."""
    ctx = ctx_of(request)
    job_id = request.match_info["id"]
    if not hmac.compare_digest(request.query.get("signature", ""), _link_sig(ctx, job_id)):
        raise VendorError(403, "the results link signature is not valid")
    result = ctx.state.result(job_id)
    if result is None:
        raise VendorError(404, "no such result")
    return web.json_response(result)


async def projects(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    _authenticated(ctx, request)
    return _data(
        [{"id": p, "name": p, "archived": False} for p in sorted(ctx.config.pasqal_projects)]
    )


async def cudaq_job(request: web.Request) -> web.Response:
    raise VendorError(501, "CUDA-Q jobs are not supported by the emulator")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/oauth/token", oauth_token)
    r.add_get("/account/api/v1/projects", projects)
    r.add_get(f"{CORE}/api/v1/devices", devices)
    r.add_get(f"{CORE}/api/v1/devices/public-specs", public_specs)
    r.add_get(f"{CORE}/api/v1/devices/specs", all_specs)
    r.add_get(f"{CORE}/api/v1/devices/specs/{{device_type}}", device_specs)
    r.add_post(f"{CORE}/api/v1/batches", create_batch)
    r.add_get(f"{CORE}/api/v1/batches/{{id}}", get_batch)
    r.add_get(f"{CORE}/api/v2/batches/{{id}}", get_batch)
    r.add_get(f"{CORE}/api/v1/batches/{{id}}/status", batch_status)
    r.add_get(f"{CORE}/api/v1/batches/{{id}}/full_results", full_results)
    r.add_patch(f"{CORE}/api/v2/batches/{{id}}/cancel", cancel_batch)
    r.add_patch(f"{CORE}/api/v2/batches/{{id}}/complete", complete_batch)
    r.add_get(f"{CORE}/api/v2/jobs", list_jobs)
    r.add_get(f"{CORE}/api/v2/jobs/{{id}}", get_job)
    r.add_get(f"{CORE}/api/v1/jobs/{{id}}/status", job_status)
    r.add_patch(f"{CORE}/api/v2/jobs/{{id}}/cancel", cancel_job)
    r.add_get(f"{CORE}/api/v1/jobs/{{id}}/results_link", results_link)
    r.add_post(f"{CORE}/api/v1/cudaq/job", cudaq_job)
    r.add_get(f"{RESULTS_PATH}/{{id}}", results_download)
