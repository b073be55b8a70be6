"""The DRA node driver as a real child process for the fault tests.

Same ``DraDriver`` as ``qpu-k8s dra-plugin``, but claims and per-claim Secrets come from JSON
files under ``<root>/claims`` and ``<root>/secrets`` (the test plays the apiserver) and no
slices are published, so the driver can be SIGKILLed and restarted without a cluster.
Run from the repo root: ``python -m testsupport.dra_child --root DIR --node NAME`` (JSON logs
on stderr; ``-m``, as a script its folder would shadow the standard library's ``operator``).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from typing import Any

NODE_LABEL = "qpu-k8s.test/node"


class FileClaims:
    """ClaimSource over ``claims/<ns>/<name>.json`` and ``secrets/<ns>/<name>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        from qpu_k8s.dra.claims import ClaimNotFoundError

        path = self.root / kind / namespace / f"{name}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            what = "ResourceClaim" if kind == "claims" else "Secret"
            raise ClaimNotFoundError(f"{what} {namespace}/{name} not found") from None
        return data

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        return self._read("claims", namespace, name)

    def get_secret(self, namespace: str, name: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._read("secrets", namespace, name).items()}


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
    from qpu_k8s.dra.agent import DraDriver, DraDriverConfig

    logs.setup("debug", "json")
    root: Path = args.root
    cfg = DraDriverConfig(
        node_name=args.node,
        config_path=root / "backends.yaml",
        plugins_dir=root / "plugins",
        registry_dir=root / "registry",
        cdi_dir=root / "cdi",
        state_dir=root / "state",
        credentials_dir=root / "creds",
        boot_id_file=root / "boot_id",
        node_labels={NODE_LABEL: args.node},
        reload_interval=0.2,
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
    import logging

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
