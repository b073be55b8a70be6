"""The real Kubernetes 1.20 control plane of ``shared/k8s-local`` for API-tier tests.

Only one such cluster can run on a machine (fixed ports, bridge and device-plugin dir), so a
pytest session starts it once and every API-tier test shares it, each in its own namespace.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from testsupport import REPO


def k8s_local_dir() -> Path:
    """``$QPU_K8S_LOCAL_DIR`` or ``../shared/k8s-local`` beside the checkout."""
    env = os.environ.get("QPU_K8S_LOCAL_DIR")
    return Path(env) if env else REPO.parent / "shared" / "k8s-local"


def build_stamp() -> Path:
    cache = Path(os.environ.get("QPU_K8S_CACHE", "/var/cache/qpu-k8s"))
    return cache / "k8s-1.20.2" / "bin" / ".build-ok"


def kubectl_120() -> Path:
    return build_stamp().parent / "kubectl"


def unavailable_reason() -> str | None:
    """Why the real cluster cannot be used here, or None when it can."""
    if not (k8s_local_dir() / "up.sh").exists():
        return f"shared/k8s-local not found at {k8s_local_dir()} (set QPU_K8S_LOCAL_DIR)"
    if not build_stamp().exists():
        return "real k8s not built: run shared/k8s-local/build.sh (about 6-10 min; .ci/run does)"
    if os.geteuid() != 0:
        return "the real k8s control plane needs root"
    return None


def logs_tail(lines: int = 40) -> str:
    out = []
    for log in sorted((run_dir() / "logs").glob("*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log.name}\n" + "\n".join(text))
    return "\n".join(out)


def run_dir() -> Path:
    return Path(os.environ.get("QPU_K8S_RUN_DIR", "/var/lib/qpu-k8s/run"))


def is_running() -> bool:
    """True when a k8s-local apiserver already answers (another session may be using it)."""
    kubeconfig = run_dir() / "kubeconfig"
    if not kubeconfig.exists() or not kubectl_120().exists():
        return False
    proc = subprocess.run(
        [str(kubectl_120()), "--kubeconfig", str(kubeconfig), "get", "--raw", "/readyz"],
        capture_output=True,
        timeout=20,
        check=False,
    )
    return proc.returncode == 0


def up(timeout: float = 300) -> Path:
    """Start the cluster; returns the admin kubeconfig path. Raises with the logs on failure."""
    proc = subprocess.run(
        ["bash", str(k8s_local_dir() / "up.sh")],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"k8s-local up.sh failed:\n{proc.stderr[-4000:]}\n{logs_tail()}")
    last = proc.stdout.strip().splitlines()[-1]
    return Path(last.removeprefix("export KUBECONFIG="))


def down() -> None:
    subprocess.run(
        ["bash", str(k8s_local_dir() / "down.sh")],
        capture_output=True,
        timeout=180,
        check=False,
    )
