"""The real Kubernetes 1.37 of ``hack/local-cluster`` for the real-cluster tier and benchmarks.

There is one such cluster per machine (fixed bridge, kubelet root and ports), so a pytest
session brings it up once (:func:`session`) and every real-cluster test shares it, each in
namespaces of its own. The scripts do the work; this module runs them and knows where their
results are:

* ``images.sh`` first, always: it is keyed on the wheel's content, so it takes seconds when
  nothing changed and rebuilds the two project images from this checkout when the code did;
* ``up.sh`` when no cluster runs (it imports the image tarballs), ``load-image.sh`` when one
  runs already and the images changed;
* ``down.sh`` at the end, unless the cluster was running before (someone else's) or
  ``QPU_K8S_REUSE_CLUSTER=1`` keeps it for an edit-test loop.

Skips need a reason a developer can act on (not root, not built); under
``QPU_K8S_REQUIRE_CLUSTER=1`` (what ``.ci/run`` sets) the same reason is a failure instead,
so CI can never pass by skipping the tier.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from testsupport.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]
HACK = REPO / "hack" / "local-cluster"
NODE = "127.0.0.1"
T = TypeVar("T")


class ClusterUnavailableError(RuntimeError):
    """The real cluster cannot run here; the message says why and what to do."""


class ClusterScriptError(RuntimeError):
    """A hack/local-cluster script failed; the message holds its output's tail."""


def _lib_setting(name: str, default: str) -> str:
    """A version from lib.sh (``NAME="${QPU_K8S_...:-X}"``), so there is one place for it."""
    text = (HACK / "lib.sh").read_text()
    match = re.search(rf'^{name}="\$\{{(\w+):-([^}}]+)\}}"', text, re.MULTILINE)
    if match is None:
        return default
    return os.environ.get(match.group(1), match.group(2))


K8S_VERSION = _lib_setting("K8S_VERSION", "1.37.2")


def cache_dir() -> Path:
    return Path(os.environ.get("QPU_K8S_CACHE", "/var/cache/qpu-k8s"))


def run_dir() -> Path:
    return Path(os.environ.get("QPU_K8S_RUN_DIR", "/var/lib/qpu-k8s/local-cluster"))


def images_dir() -> Path:
    return cache_dir() / "local-cluster" / "images"


def k8s_bin() -> Path:
    return cache_dir() / "local-cluster" / f"kubernetes-{K8S_VERSION}" / "bin"


def kubectl_path() -> Path:
    """The kubectl built with the cluster (same version as the apiserver)."""
    return k8s_bin() / "kubectl"


def kubeconfig_path() -> Path:
    return run_dir() / "kubeconfig"


def reuse_requested() -> bool:
    return os.environ.get("QPU_K8S_REUSE_CLUSTER") == "1"


def required() -> bool:
    """True in CI: a missing cluster fails the tier instead of skipping it."""
    return os.environ.get("QPU_K8S_REQUIRE_CLUSTER") == "1"


def unavailable_reason() -> str | None:
    """Why the real cluster cannot run here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "the local Kubernetes cluster runs on Linux only"
    if os.geteuid() != 0:
        return "the local Kubernetes cluster needs root (it owns a bridge, iptables, mounts)"
    stamp = k8s_bin() / ".build-ok"
    if not stamp.exists():
        return (
            f"Kubernetes {K8S_VERSION} is not built here ({stamp} missing): run "
            "hack/local-cluster/build.sh (15-25 min once; .ci/run does it)"
        )
    missing = [
        t for t in ("pause", "busybox", "coredns") if not (images_dir() / f"{t}.tar").exists()
    ]
    if missing:
        return f"images {missing} not built: run hack/local-cluster/images.sh"
    return None


def _script(name: str, *args: str, timeout: float, log: Path | None = None) -> str:
    """Run a hack/local-cluster script; its stdout, or ClusterScriptError with the tail."""
    proc = subprocess.run(
        ["bash", str(HACK / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise ClusterScriptError(
            f"hack/local-cluster/{name} {' '.join(args)} exited {proc.returncode}:\n"
            f"{proc.stderr[-4000:]}\n{proc.stdout[-1000:]}"
        )
    return proc.stdout


def is_running() -> bool:
    """True when a local cluster's apiserver answers (this session's or an earlier one's)."""
    if not kubeconfig_path().exists() or not kubectl_path().exists():
        return False
    proc = subprocess.run(
        [str(kubectl_path()), "--kubeconfig", str(kubeconfig_path()), "get", "--raw", "/readyz"],
        capture_output=True,
        timeout=20,
        check=False,
    )
    return proc.returncode == 0


def _image_keys() -> dict[str, str]:
    """The content keys images.sh recorded for the two project images."""
    out = {}
    for name in ("agents", "emulator"):
        key = images_dir() / f"{name}.key"
        out[name] = key.read_text().strip() if key.exists() else ""
    return out


def build_images(timeout: float = 3600) -> bool:
    """Run images.sh (content-keyed); True when a project image changed."""
    before = _image_keys()
    _script("images.sh", timeout=timeout, log=cache_dir() / "local-cluster/logs/images-last.log")
    return _image_keys() != before


def up(timeout: float = 600) -> Path:
    """Start the cluster (up.sh); returns the admin kubeconfig."""
    out = _script("up.sh", timeout=timeout)
    last = out.strip().splitlines()[-1]
    return Path(last.removeprefix("export KUBECONFIG="))


def down(timeout: float = 300) -> None:
    """Stop it and undo its host changes (down.sh); caches stay."""
    _script("down.sh", timeout=timeout)


def load_images(timeout: float = 600) -> None:
    """Import the project images into the running containerd (after they changed)."""
    _script("load-image.sh", timeout=timeout)


def restart(component: str, kill: bool = False, timeout: float = 120) -> None:
    """Restart one component with its original command line (restart.sh)."""
    _script("restart.sh", component, *(["--kill"] if kill else []), timeout=timeout)


def wait_until(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.25) -> T:
    """Poll ``check`` until it returns something other than None/False, or fail at the deadline.

    For state only observable by polling the apiserver, the emulator or a file; the caller
    names what it waits for, so a timeout says what did not happen. The loop is
    :func:`testsupport.waiting.wait_for`'s; here 0, "" and empty collections are answers too.
    """

    def boxed() -> tuple[T] | None:
        value = check()
        return None if value is None or value is False else (value,)

    return wait_for(boxed, timeout, what, step=every)[0]


@dataclass(frozen=True)
class LocalCluster:
    """Handles for a running local cluster: kubeconfig, kubectl, helm and a client."""

    kubeconfig: Path
    kubectl_bin: Path
    helm_bin: Path | None = None

    def kubectl(
        self,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = 180,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.kubectl_bin), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}\n{proc.stdout}")
        return proc

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, docs: Sequence[dict[str, Any]] | str, *extra: str) -> str:
        import yaml

        text = docs if isinstance(docs, str) else yaml.safe_dump_all(list(docs))
        return self.kubectl("apply", "-f", "-", *extra, stdin=text).stdout

    def helm(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        if self.helm_bin is None:
            raise RuntimeError("no helm binary given")
        proc = subprocess.run(
            [str(self.helm_bin), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=REPO,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}\n{proc.stdout}")
        return proc

    def api(self) -> Any:
        """A new kubernetes ApiClient for this cluster (close it when done)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]

    def restart(self, component: str, kill: bool = False) -> None:
        restart(component, kill=kill)

    @contextlib.contextmanager
    def scaled_down(self, namespace: str, deployment: str) -> Iterator[None]:
        """Stop a Deployment's pods for a while (e.g. the chart's operator while a test runs
        its own copy as a host process), and bring them back afterwards."""
        found = self.kubectl("-n", namespace, "get", "deployment", deployment, check=False)
        if found.returncode != 0:
            yield
            return
        replicas = self.kubectl(
            "-n", namespace, "get", "deployment", deployment, "-o", "jsonpath={.spec.replicas}"
        ).stdout.strip()
        self.kubectl("-n", namespace, "scale", "deployment", deployment, "--replicas=0")
        selector = self.kubectl(
            "-n",
            namespace,
            "get",
            "deployment",
            deployment,
            "-o",
            "jsonpath={.spec.selector.matchLabels}",
        ).stdout
        labels = ",".join(f"{k}={v}" for k, v in json.loads(selector or "{}").items())
        wait_until(
            lambda: (
                not self.kubectl(
                    "-n", namespace, "get", "pods", "-l", labels, "-o", "name"
                ).stdout.strip()
            ),
            120,
            f"the pods of deployment {namespace}/{deployment} to go",
            every=1.0,
        )
        try:
            yield
        finally:
            self.kubectl(
                "-n", namespace, "scale", "deployment", deployment, f"--replicas={replicas or 1}"
            )
            self.kubectl(
                "-n",
                namespace,
                "rollout",
                "status",
                f"deployment/{deployment}",
                "--timeout=180s",
            )


@contextlib.contextmanager
def session(helm_bin: Path | None = None) -> Iterator[LocalCluster]:
    """The cluster for one test session (or benchmark run); see the module docstring.

    Raises ClusterUnavailableError when it cannot run here.
    """
    reason = unavailable_reason()
    if reason:
        raise ClusterUnavailableError(reason)
    with _exclusive_use():
        yield from _session(helm_bin)


@contextlib.contextmanager
def _exclusive_use() -> Iterator[None]:
    """One user of the machine's one cluster at a time.

    Two test sessions (two checkouts, CI beside a developer) would otherwise install the
    same release into each other's cluster or stop it under the other; the second one
    waits here, saying so, until the first has finished.
    """
    path = cache_dir() / "local-cluster" / "session.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another session to finish with the local cluster ({path})",
                  file=sys.stderr, flush=True)  # fmt: skip
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _session(helm_bin: Path | None) -> Iterator[LocalCluster]:
    changed = build_images()
    running = is_running()
    if running:
        if changed:
            load_images()
    else:
        # A cluster that is not ready but left processes or mounts behind is what a session
        # killed before its down.sh leaves (a CI timeout, a lost machine session). We hold the
        # machine's lock, so nobody uses it: clear it, as up.sh asks, instead of failing on it.
        down()
        up()
    try:
        yield LocalCluster(kubeconfig_path(), kubectl_path(), helm_bin)
    finally:
        if not running and not reuse_requested():
            down()
