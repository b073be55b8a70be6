"""QRMI adapter overhead: acquire through ``QrmiClient`` against a direct qrmi acquire.

    python -m benchmarks.adapter_bench [--rounds 30] [--per-round 10] [--held 8]

Both sides use the real ``qrmi`` client against the local emulator, alternated in rounds
(:mod:`benchmarks.measure`), each acquire released right after (untimed). The direct side
reuses one warm ``QuantumResource`` (the cheapest possible caller: its IAM token cached,
its connection open); the adapter adds the deadline's worker thread, error mapping,
metrics, its log, and an object of its own per live acquisition (qrmi keeps the session in
the object).

Rows: acquire on a node holding no other session; acquire while ``--held`` sessions of the
same backend are held (each needs its own object: the case of every busy node); and the
health probe (``status``). The agents log as deployed (info, JSON lines, to nowhere).

Then pods as they come to a busy node (``--arrivals`` acquires ``--gap`` seconds apart,
every session kept): each needs an object no session holds. A direct caller builds one
per acquire (a new qrmi object fetches its vendor token first); ``QrmiClient`` builds a
warm spare in the background after each acquire, so the next one finds it ready.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.measure import Compared, compare, timed
from benchmarks.report import Target, heading, ms, table, targets
from qpu_k8s.core import logs
from qpu_k8s.core.model import parse_backend
from qpu_k8s.core.qrmi_client import CallTimeouts, QrmiClient, qrmi
from qpu_k8s.emulator import running_emulator

BACKEND = "fake_manila"
LIMIT = 1.10


def _acquire_op(
    acquire: Callable[[], str], release: Callable[[str], object]
) -> Callable[[], float]:
    def op() -> float:
        start = time.perf_counter()
        token = acquire()
        took = time.perf_counter() - start
        release(token)
        return took

    return op


def _arrivals(acquire: Callable[[], str], n: int, gap: float) -> tuple[list[float], list[str]]:
    """``n`` acquires ``gap`` seconds apart (pacing, not waiting on anything), none released."""
    took, tokens = [], []
    for _ in range(n):
        time.sleep(gap)
        start = time.perf_counter()
        tokens.append(acquire())
        took.append(time.perf_counter() - start)
    return took, tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--held", type=int, default=8, help="sessions held meanwhile")
    parser.add_argument("--arrivals", type=int, default=30, help="acquires on a busy node")
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between them")
    args = parser.parse_args(argv)
    heading("QRMI adapter: acquire through QrmiClient vs direct qrmi")
    logs.setup("info", "json", stream=open(os.devnull, "w"))  # noqa: SIM115
    with running_emulator(noise=False) as emu:
        direct: Any = qrmi.QuantumResource.from_config(
            BACKEND, qrmi.ResourceType.IBMQuantumComputeService, emu.qrmi_config(BACKEND)
        )
        backend = parse_backend(
            {
                "name": "bench",
                "spec": {
                    "resourceId": BACKEND,
                    "type": "ibm-quantum-compute-service",
                    "config": emu.ibm_config(BACKEND),
                    "credentialsSecretRef": {"name": "bench"},
                },
            }
        )
        client = QrmiClient(backend, emu.ibm_credentials(), timeouts=CallTimeouts.uniform(30))
        direct_op = _acquire_op(direct.acquire, direct.release)
        adapter_op = _acquire_op(client.acquire, client.release)
        kw = {"rounds": args.rounds, "per_round": args.per_round}
        rows: list[tuple[str, Compared]] = [("acquire", compare(direct_op, adapter_op, **kw))]
        held = [client.acquire() for _ in range(args.held)]
        rows.append((f"acquire, {args.held} sessions held", compare(direct_op, adapter_op, **kw)))
        for token in held:
            client.release(token)
        rows.append(
            (
                "status (health probe)",
                compare(lambda: timed(direct.status), lambda: timed(client.health), **kw),
            )
        )
        kinds = (qrmi.ResourceType.IBMQuantumComputeService, emu.qrmi_config(BACKEND))
        kept: list[Any] = []

        def fresh_acquire() -> str:
            obj = qrmi.QuantumResource.from_config(BACKEND, *kinds)
            kept.append(obj)
            token: str = obj.acquire()
            return token

        fresh, fresh_tokens = _arrivals(fresh_acquire, args.arrivals, args.gap)
        spare, spare_tokens = _arrivals(client.acquire, args.arrivals, args.gap)
        for obj, token in zip(kept, fresh_tokens, strict=True):
            obj.release(token)
        for token in spare_tokens:
            client.release(token)
    n = args.rounds * args.per_round
    print(f"Each row: {n} calls of each side, alternated in rounds of {args.per_round}.\n")
    print(
        table(
            ["call", "direct qrmi p50", "QrmiClient p50", "ratio", "above direct"],
            [
                (name, ms(c.floor_p50), ms(c.target_p50), f"{c.ratio:.2f}x", ms(c.excess))
                for name, c in rows
            ],
        )
    )
    f50, s50 = statistics.median(fresh), statistics.median(spare)
    print(
        f"\nPods coming to a busy node ({args.arrivals} acquires {args.gap:g} s apart, every "
        f"session kept): a new qrmi object's acquire p50 {ms(f50)}, QrmiClient p50 {ms(s50)} "
        f"({s50 / f50:.2f}x: its warm spare is built between two pods).\n"
    )
    worst = max(c.ratio for name, c in rows if name.startswith("acquire"))
    targets(
        [
            Target(
                "adapter: acquire through QrmiClient vs direct qrmi",
                f"{worst:.2f}x (worst acquire row)",
                f"<= {LIMIT}x",
                worst <= LIMIT,
            )
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
