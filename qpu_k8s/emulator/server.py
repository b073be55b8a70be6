"""The aiohttp application and its lifecycle: in the foreground (CLI) or a background thread.

``running_emulator()`` is what tests and the demo use: it starts the server on its own event
loop in a daemon thread and yields an ``Emulator`` handle (URL, state, fault switches, and
the QRMI config dicts that point a client at it). Stopping is prompt even while requests
hang on a fault: hanging handlers watch a stop event and drop their connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from . import admin, catalog, ibm, pasqal
from .auth import TokenIssuer
from .client import ConfigHelpers
from .config import EmulatorConfig
from .context import CTX, ConnectionDropped, ServerContext, VendorError, error_response
from .faults import Fault, FaultKind, FaultRegistry
from .jobs import JobRunner
from .state import EmulatorState, RequestRecord
from .workers import WorkerPool

log = logging.getLogger("qpu_k8s.emulator")

# aiohttp waits this long for in-flight handlers when stopping, then cancels them (SIGTERM
# must stop the emulator within a second: status polls and hangs end on the stop event).
SHUTDOWN_GRACE_SECONDS = 0.5
# How often expired sessions are closed.
REAP_INTERVAL_SECONDS = 0.25


def _vendor_of(path: str) -> str:
    if path.startswith(admin.PREFIX):
        return "admin"
    if path.startswith((pasqal.CORE, "/oauth", "/account", pasqal.RESULTS_PATH)):
        return "pasqal"
    return "ibm"


@web.middleware
async def _middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Global faults, vendor-shaped errors, and a body-free debug log of every request."""
    ctx = request.app[CTX]
    vendor = _vendor_of(request.path)
    started = time.monotonic()
    status = 500
    try:
        if vendor != "admin":
            await ctx.gate(request, None)
        response: web.StreamResponse = await handler(request)
        status = response.status
        return response
    except VendorError as exc:
        status = exc.status
        return error_response(vendor, exc.status, exc.message)  # type: ignore[arg-type]
    except ConnectionDropped:
        status = 0
        if request.transport is not None:
            request.transport.close()
        raise web.HTTPServiceUnavailable() from None
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception:
        log.exception("emulator handler failed: %s %s", request.method, request.path)
        return error_response(vendor, 500, "internal emulator error")  # type: ignore[arg-type]
    finally:
        seconds = time.monotonic() - started
        # Path only: query strings may carry signed links, headers carry credentials.
        log.debug("%s %s -> %s (%.3f s)", request.method, request.path, status, seconds)
        ctx.state.record_request(RequestRecord(request.method, request.path, status, seconds))


def build_app(ctx: ServerContext) -> web.Application:
    app = web.Application(middlewares=[_middleware], client_max_size=64 * 1024 * 1024)
    app[CTX] = ctx
    ibm.add_routes(app)
    pasqal.add_routes(app)
    admin.add_routes(app)
    return app


# How long running_emulator() waits for the workers' warm-up before serving anyway.
READY_TIMEOUT_SECONDS = 60.0


class EmulatorServer:
    """One server on the current event loop: ``await start()`` ... ``await stop()``."""

    def __init__(
        self,
        config: EmulatorConfig,
        state: EmulatorState | None = None,
        faults: FaultRegistry | None = None,
    ) -> None:
        self.config = config
        self.state = state or EmulatorState()
        self.faults = faults or FaultRegistry()
        self.port = 0
        self.pool = WorkerPool()
        self._runner: web.AppRunner | None = None
        self._ctx: ServerContext | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._warm: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind and serve; returns the bound port."""
        stopping = asyncio.Event()
        if self.config.warm_workers:
            self.pool.warm_up()
        runner = JobRunner(
            self.state,
            self.faults,
            self.config.max_workers,
            stopping,
            pool=self.pool,
            max_queued_jobs=self.config.max_queued_jobs,
        )
        self._ctx = ServerContext(
            config=self.config,
            state=self.state,
            faults=self.faults,
            tokens=TokenIssuer(self.config.token_ttl_seconds),
            runner=runner,
            stopping=stopping,
        )
        ctx = self._ctx
        runner.on_final(lambda job: ibm.on_job_final(ctx, job))
        app = build_app(self._ctx)
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS, handle_signals=False
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        server = site._server  # the asyncio.Server: the only place the bound port is known
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.config.port
        self._ctx.base_url = f"http://{_url_host(self.config.host)}:{self.port}"
        self._reaper = asyncio.get_running_loop().create_task(self._reap(ctx))
        if self.config.warm_workers:
            self._warm = asyncio.get_running_loop().create_task(pasqal.prefetch_specs(ctx))
        log.info("emulator listening on %s", self._ctx.base_url)
        return self.port

    def warmed(self) -> bool:
        """The workers have preloaded and what is built in them at start (device specs) is
        cached, so no request waits for a worker."""
        return self._warm is not None and self._warm.done()

    async def _reap(self, ctx: ServerContext) -> None:
        """Close sessions whose max_ttl ran out, as the vendor does, even if nobody asks."""
        while not ctx.stopping.is_set():
            ibm.expire_sessions(ctx)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.stopping.wait(), REAP_INTERVAL_SECONDS)

    async def reset(self) -> None:
        if self._ctx is not None:
            await self._ctx.runner.cancel_all()
        self.state.reset()
        self.faults.clear()

    async def stop(self) -> None:
        if self._ctx is not None:
            self._ctx.stopping.set()
            await self._ctx.runner.cancel_all()
        if self._reaper is not None:
            await self._reaper
            self._reaper = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class Emulator(ConfigHelpers):
    """A running emulator in a background thread; see ``running_emulator``.

    The client-configuration helpers (``ibm_config``, ``job_env``...) come from
    ``ConfigHelpers``.
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.state = EmulatorState()
        self.faults = FaultRegistry()
        self._server = EmulatorServer(self.config, self.state, self.faults)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> Emulator:
        ready = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._server.start())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=main, name="qpu-k8s-emulator", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"the emulator did not start within {timeout} s")
        if errors:
            raise errors[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (hanging requests are dropped) and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self._server.stop(), loop)
        try:
            fut.result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- where it is ---------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._server.port

    @property
    def host(self) -> str:
        return _url_host(self.config.host)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- workers -------------------------------------------------------------------------
    def wait_warm(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until the warm-up (worker preload, device specs) is done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._server.warmed():
                return True
            self._server.pool.ready.wait(0.05)
        return self._server.warmed()

    def workers_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the simulation fork server to finish its preload."""
        return self._server.pool.ready.wait(timeout)

    def worker_pids(self) -> list[int]:
        """Process ids of the worker processes running jobs right now."""
        return self._server.pool.pids()

    # ---- faults and state ----------------------------------------------------------------
    def set_fault(
        self,
        kind: str,
        backend: str | None = None,
        *,
        seconds: float = 0.0,
        status: int = 503,
        reason: str = "",
        paused: bool = False,
    ) -> Fault:
        """Switch a fault on (see ``FaultKind``); returns the ``Fault``."""
        if backend is not None:
            catalog.get(backend)
        fault = Fault.from_dict(
            {
                "kind": kind,
                "backend": backend,
                "seconds": seconds,
                "status": status,
                "reason": reason,
                "paused": paused,
            }
        )
        self.faults.set(fault)
        return fault

    def clear_faults(self, kind: str | None = None, backend: str | None = None) -> int:
        return self.faults.clear(FaultKind(kind) if kind else None, backend)

    def set_online(
        self, backend: str, online: bool = True, *, reason: str = "", paused: bool = False
    ) -> None:
        """Flip a backend's health (offline or paused with ``reason``, or back online)."""
        if online:
            self.clear_faults("offline", backend)
        else:
            self.set_fault("offline", backend, reason=reason, paused=paused)

    def reset(self, timeout: float = 10.0) -> None:
        """Cancel live jobs, forget sessions/jobs/requests and clear every fault."""
        if self._loop is None:
            raise RuntimeError("the emulator is not running")
        asyncio.run_coroutine_threadsafe(self._server.reset(), self._loop).result(timeout)


@contextlib.contextmanager
def running_emulator(
    port: int = 0, host: str = "127.0.0.1", config: EmulatorConfig | None = None, **settings: Any
) -> Iterator[Emulator]:
    """Run an emulator in a background thread for the duration of the ``with`` block.

    ``settings`` are ``EmulatorConfig`` fields (e.g. ``noise=False``); ``config`` replaces
    them all.
    """
    cfg = config or EmulatorConfig(host=host, port=port, **settings)
    emu = Emulator(cfg).start()
    if cfg.warm_workers:
        # The first requests would otherwise wait for the workers' preload (seconds): a
        # client with a short deadline would see a slow vendor that is only starting.
        emu.wait_warm(READY_TIMEOUT_SECONDS)
    try:
        yield emu
    finally:
        emu.stop()
