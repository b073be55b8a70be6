"""The DRA node driver as a real child process for the fault tests.

Same ``DraDriver`` as ``qpu-k8s dra-plugin``, but claims and per-claim Secrets come from JSON
files under ``<root>/claims`` and ``<root>/secrets`` (the test plays the apiserver, see
``testsupport.dra.DraNode``) and no slices are published, so the driver can be SIGKILLed and
restarted without a cluster.

Run from the repo root: ``python -m testsupport.dra_child --root DIR --node NAME`` (JSON logs
on stderr; ``-m``, as a script its folder would shadow the standard library's ``operator``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--instance", default="fault")
    parser.add_argument("--probe-timeout", type=float, default=2.0)
    parser.add_argument("--acquire-timeout", type=float, default=30.0)
    args = parser.parse_args()

    from qpu_k8s.core import logs
    from qpu_k8s.core.metrics import serve_metrics
    from qpu_k8s.dra.agent import DraDriver
    from testsupport.dra import FileClaims, driver_config

    logs.setup("debug", "json")
    root: Path = args.root
    cfg = driver_config(
        root,
        args.node,
        probe_timeout=args.probe_timeout,
        acquire_timeout=args.acquire_timeout,
        instance=args.instance,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    metrics = serve_metrics("127.0.0.1:0")
    assert metrics is not None
    agent = DraDriver(cfg, claims=FileClaims(root), publish_slices=False)
    agent.start()
    logging.getLogger("dra_child").info(
        "dra child started",
        extra={"metrics_port": metrics.server_port, **agent.recovered},
    )
    try:
        stop.wait()
    finally:
        agent.stop()
        metrics.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
