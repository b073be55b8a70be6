"""Access tokens: JWT-shaped, HMAC-signed with a per-server secret, verified statelessly.

ibm-cloud-sdk-core decodes the IAM access token (without verifying it) to read ``exp``,
so the token must be a real three-part JWT. Signing with a random per-process key means
a token from another emulator run, or a forged one, is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    issued_at: int
    expires_at: int

    @property
    def expires_in(self) -> int:
        return self.expires_at - self.issued_at


class TokenIssuer:
    """Issues and checks bearer tokens for one emulator process."""

    def __init__(self, ttl_seconds: int) -> None:
        self._key = secrets.token_bytes(32)
        self._ttl = ttl_seconds

    def issue(self, subject: str, audience: str) -> IssuedToken:
        now = int(time.time())
        header = {"alg": "HS256", "typ": "JWT"}
        payload = {
            "iss": "qpu-k8s-emulator",
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": now + self._ttl,
            "jti": secrets.token_hex(8),
        }
        signing_input = (
            _b64(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64(json.dumps(payload, separators=(",", ":")).encode())
        )
        sig = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
        return IssuedToken(signing_input + "." + _b64(sig), now, now + self._ttl)

    def sign(self, text: str) -> str:
        """A hex MAC of ``text`` (for pre-signed links such as Pasqal results links)."""
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def verify(self, token: str, audience: str) -> bool:
        """True when ``token`` was issued by this process for ``audience`` and is unexpired."""
        parts = token.split(".")
        if len(parts) != 3:
            return False
        signing_input = parts[0] + "." + parts[1]
        expected = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(expected, _unb64(parts[2])):
                return False
            payload = json.loads(_unb64(parts[1]))
        except (ValueError, json.JSONDecodeError):
            return False
        return (
            isinstance(payload, dict)
            and payload.get("aud") == audience
            and int(payload.get("exp", 0)) > time.time()
        )


def bearer(header_value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header_value:
        return None
    scheme, _, token = header_value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def matches_any(candidate: str, accepted: frozenset[str] | set[str]) -> bool:
    """Constant-time membership test, so response timing does not leak accepted secrets."""
    found = False
    for value in accepted:
        found |= hmac.compare_digest(candidate.encode(), value.encode())
    return found
