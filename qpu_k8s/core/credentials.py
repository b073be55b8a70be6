"""Vendor credentials: where they come from, which keys a type accepts, and redaction.

Node agents read a Secret mounted as a directory (``<dir>/<secret-name>/<KEY>``, the layout
of a Secret volume), so they need no RBAC on Secrets; the operator reads them from the API.
Every value loaded here is registered with the redactor, so it can never reach a log line.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from qpu_k8s.core.errors import CredentialsError
from qpu_k8s.core.model import QuantumBackend, SecretRef
from qpu_k8s.core.vendors import profile

_MIN_REDACT_LEN = 4


class Redactor:
    """Replaces every known secret value in a text with ``[REDACTED]``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: frozenset[str] = frozenset()
        # Longest first (a value inside a longer one must not split it), sorted once here
        # rather than on every log line.
        self._ordered: tuple[str, ...] = ()

    def register(self, values: Iterable[str]) -> None:
        new = {v for v in values if len(v) >= _MIN_REDACT_LEN}
        if new - self._values:
            with self._lock:
                self._values = self._values | new
                self._ordered = tuple(sorted(self._values, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for v in self._ordered:
            if v in text:
                text = text.replace(v, "[REDACTED]")
        return text


REDACTOR = Redactor()


def redact(text: str) -> str:
    return REDACTOR.redact(text)


class CredentialSource(Protocol):
    """Returns the key/value pairs of the Secret a backend references."""

    def get(self, ref: SecretRef) -> Mapping[str, str]: ...


class DirectoryCredentials:
    """Secrets mounted as files: ``<root>/<secret name>/<KEY>`` (a Secret volume's layout)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, ref: SecretRef) -> Mapping[str, str]:
        folder = self.root / ref.name
        if not folder.is_dir():
            raise FileNotFoundError(f"secret {ref.name!r} is not mounted under {self.root}")
        out: dict[str, str] = {}
        for f in sorted(folder.iterdir()):
            # Secret volumes hold "..data" symlinks and dot-dirs; keys are plain file names.
            if f.name.startswith(".") or not f.is_file():
                continue
            out[f.name] = f.read_text(encoding="utf-8").strip()
        REDACTOR.register(out.values())
        return out


class StaticCredentials:
    """In-memory secrets keyed by Secret name (tests, the demo, the operator's cache)."""

    def __init__(self, secrets: Mapping[str, Mapping[str, str]]) -> None:
        self._secrets = {k: dict(v) for k, v in secrets.items()}
        for v in self._secrets.values():
            REDACTOR.register(v.values())

    def get(self, ref: SecretRef) -> Mapping[str, str]:
        try:
            return self._secrets[ref.name]
        except KeyError:
            raise FileNotFoundError(f"secret {ref.name!r} not found") from None


def _wanted(options: tuple[frozenset[str], ...]) -> str:
    return " or ".join("+".join(sorted(o)) for o in options)


def resolve_credentials(backend: QuantumBackend, source: CredentialSource | None) -> dict[str, str]:
    """The credential keys of ``backend``'s type found in its Secret, checked for completeness.

    Keys the type does not know are dropped (a Secret may hold unrelated data). Errors name
    the Secret and the missing key, never a value.
    """
    spec = backend.spec
    t = profile(spec.type)
    if spec.credentials_secret_ref is None:
        return {}
    ref = spec.credentials_secret_ref
    if source is None:
        raise CredentialsError(backend.name, f"no credential source to read Secret {ref.name!r}")
    try:
        data = source.get(ref)
    except (OSError, LookupError) as err:
        raise CredentialsError(
            backend.name,
            f"Secret {ref.name!r} could not be read ({err}); create it with the keys "
            f"{_wanted(t.credential_options) or 'the vendor needs'}",
        ) from None
    REDACTOR.register(data.values())
    keys = t.secret_keys
    creds = {
        k: v
        for k, v in data.items()
        if k in keys or (t.open_prefix is not None and k.startswith(t.open_prefix))
    }
    if t.credential_options and not any(opt <= creds.keys() for opt in t.credential_options):
        wanted = _wanted(t.credential_options)
        present = ", ".join(sorted(data.keys())) or "no keys"
        raise CredentialsError(
            backend.name,
            f"Secret {ref.name!r} has {present}; type {spec.type.value} needs {wanted}",
        )
    empty = sorted(k for k, v in creds.items() if not v)
    if empty:
        raise CredentialsError(backend.name, f"Secret {ref.name!r} has empty key(s) {empty}")
    return creds
