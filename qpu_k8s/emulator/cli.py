"""``qpu-k8s emulator``: serve the emulated vendor APIs in the foreground.

``--ready-file`` receives the bound port once the server listens, so a parent process can
wait for the file instead of sleeping. Credentials are better passed through the env
(``QPU_K8S_EMULATOR_API_KEY``, ``QPU_K8S_EMULATOR_PASQAL_TOKEN``) or files than argv, which
other local users can read. The limits (qubits, shots, time, queue, workers) are flags
whose defaults come from ``QPU_K8S_EMULATOR_<FLAG>`` (the Helm chart sets those).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path

from . import catalog
from .config import DEFAULT_API_KEY, DEFAULT_PASQAL_TOKEN, DEFAULT_SERVICE_CRN, EmulatorConfig

log = logging.getLogger("qpu_k8s.emulator")

ENV_API_KEY = "QPU_K8S_EMULATOR_API_KEY"
ENV_PASQAL_TOKEN = "QPU_K8S_EMULATOR_PASQAL_TOKEN"  # noqa: S105 - a variable name
ENV_PREFIX = "QPU_K8S_EMULATOR_"

# flag -> (EmulatorConfig field, type, help). Defaults are EmulatorConfig's; each flag's
# default comes from the env variable QPU_K8S_EMULATOR_<FLAG> first.
LIMIT_FLAGS: dict[str, tuple[str, type, str]] = {
    "--max-qubits": (
        "max_sim_qubits",
        int,
        "most qubits a circuit may act on; 0: as many as the backend has",
    ),
    "--max-exact-qubits": (
        "max_exact_qubits",
        int,
        "circuits on at most this many qubits get the exact simulation with calibrated "
        "noise; wider ones the ideal simulation and the fidelity model",
    ),
    "--max-shots": ("max_shots", int, "most shots (IBM) or runs (Pasqal) per pub or job"),
    "--max-job-seconds": (
        "max_job_seconds",
        float,
        "a job still running after this long is killed (IBM: 'Cancelled - Ran too long')",
    ),
    "--max-queued-jobs": (
        "max_queued_jobs",
        int,
        "jobs waiting per backend before new ones are refused (HTTP 429); 0: unbounded",
    ),
    "--max-atoms": ("max_sim_atoms", int, "most atoms a pulser sequence may hold"),
    "--workers": ("max_workers", int, "simulations running at once, one process each"),
    "--mps-max-bond": (
        "mps_max_bond",
        int,
        "bond-dimension cap of the matrix-product-state simulation of wide circuits",
    ),
}


def limit_env(flag: str) -> str:
    """``--max-shots`` -> ``QPU_K8S_EMULATOR_MAX_SHOTS``."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The emulator's flags, for the ``qpu-k8s emulator`` sub-command."""
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; the admin API is unauthenticated)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port to bind (default 0: any free port)"
    )
    parser.add_argument(
        "--api-key",
        action="append",
        default=None,
        metavar="KEY",
        help=f"accepted IBM IAM API key, repeatable (env {ENV_API_KEY}; "
        f"default {DEFAULT_API_KEY!r})",
    )
    parser.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        help="file with accepted IBM IAM API keys, one per line",
    )
    parser.add_argument(
        "--pasqal-token",
        action="append",
        default=None,
        metavar="TOKEN",
        help=f"accepted static Pasqal bearer token, repeatable (env {ENV_PASQAL_TOKEN})",
    )
    parser.add_argument(
        "--service-crn",
        default=DEFAULT_SERVICE_CRN,
        help="the IBM service instance CRN clients must send",
    )
    parser.add_argument(
        "--project-id",
        action="append",
        default=None,
        help="accepted Pasqal project id, repeatable (default 'emulator-project')",
    )
    parser.add_argument(
        "--backend",
        action="append",
        default=None,
        choices=catalog.names(),
        help="serve only these backends, repeatable (default: all)",
    )
    parser.add_argument(
        "--ideal", action="store_true", help="simulate IBM backends without their calibrated noise"
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=0.5,
        help="how long a status poll waits for a running job to finish",
    )
    defaults = EmulatorConfig()
    for flag, (field_name, _kind, help_text) in LIMIT_FLAGS.items():
        parser.add_argument(
            flag,
            default=None,
            metavar="N",
            help=f"{help_text} (env {limit_env(flag)}; default {getattr(defaults, field_name)})",
        )
    parser.add_argument(
        "--no-warm-workers",
        action="store_true",
        help="start the simulation workers' fork server on the first job, not at start-up",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="write the bound port to this file once serving",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )


def _keys(flag: list[str] | None, env: str, file: Path | None, default: str) -> frozenset[str]:
    keys: set[str] = set(flag or [])
    if os.environ.get(env):
        keys.update(k.strip() for k in os.environ[env].split(",") if k.strip())
    if file is not None:
        keys.update(line.strip() for line in file.read_text().splitlines() if line.strip())
    return frozenset(keys or {default})


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Build the settings; raises ValueError naming the bad flag."""
    try:
        api_keys = _keys(args.api_key, ENV_API_KEY, args.api_key_file, DEFAULT_API_KEY)
    except OSError as exc:
        raise ValueError(f"--api-key-file: cannot read it ({exc.strerror})") from None
    tokens = _keys(args.pasqal_token, ENV_PASQAL_TOKEN, None, DEFAULT_PASQAL_TOKEN)
    kwargs: dict[str, object] = {
        "host": args.host,
        "port": args.port,
        "api_keys": api_keys,
        "pasqal_tokens": tokens,
        "service_crn": args.service_crn,
        "backends": tuple(args.backend) if args.backend else None,
        "noise": not args.ideal,
        "settle_seconds": args.settle_seconds,
    }
    if args.project_id:
        kwargs["pasqal_projects"] = frozenset(args.project_id)
    for flag, (field_name, kind, _help) in LIMIT_FLAGS.items():
        raw = getattr(args, field_name_of(flag))
        source = flag
        if raw is None and os.environ.get(limit_env(flag), "").strip():
            raw, source = os.environ[limit_env(flag)].strip(), limit_env(flag)
        if raw is None:
            continue
        try:
            kwargs[field_name] = kind(raw)
        except ValueError:
            raise ValueError(f"{source}: {raw!r} is not a valid {kind.__name__}") from None
    kwargs["warm_workers"] = not args.no_warm_workers
    try:
        return EmulatorConfig(**kwargs)  # type: ignore[arg-type]
    except ValueError as exc:
        message = str(exc)
        for flag, (field_name, _kind, _help) in LIMIT_FLAGS.items():
            message = message.replace(field_name, flag)
        raise ValueError(message) from None


def field_name_of(flag: str) -> str:
    """The argparse attribute of ``flag`` (``--max-shots`` -> ``max_shots``)."""
    return flag.lstrip("-").replace("-", "_")


def _write_ready(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)  # atomic: a reader never sees a half-written file


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(config: EmulatorConfig, ready_file: Path | None = None) -> None:
    """Serve until SIGTERM/SIGINT."""
    from .server import EmulatorServer

    server = EmulatorServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = await server.start()
    try:
        if ready_file is not None:
            _write_ready(ready_file, port)
        await stop.wait()
    finally:
        await server.stop()
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)  # noqa: ASYNC240 - a tiny local file, at exit


def run(args: argparse.Namespace) -> int:
    """Entry point for an already-parsed ``qpu-k8s emulator`` command line."""
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        config = config_from_args(args)
    except (ValueError, catalog.UnknownBackendError) as exc:
        print(f"qpu-k8s emulator: {exc}", file=sys.stderr)
        return 2
    if not _is_loopback(config.host):
        log.warning("binding %s: the /_emulator admin API is unauthenticated", config.host)
    try:
        asyncio.run(serve(config, args.ready_file))
    except OSError as exc:
        print(
            f"qpu-k8s emulator: cannot serve on {config.host}:{config.port}: {exc}", file=sys.stderr
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qpu-k8s emulator", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
