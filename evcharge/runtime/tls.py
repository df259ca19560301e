"""TLS for every link of evcharge: the contexts each side builds from `--ca`, `--cert`, `--key`,
and the one place that says whether a failed handshake is an outage or a refusal.

A peer whose certificate does not verify (another CA, expired, issued for another
host) will not verify on the next try either: `is_refusal` says so, the retry policy
stops there, and the role prints one line naming why instead of retrying forever.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from evcharge.errors import ConfigError

# Handshake failures that retrying cannot mend: the certificate, not the network.
_REFUSAL_WORDS = (
    "certificate",
    "unknown ca",
    "unknown_ca",
    "bad certificate",
    "handshake failure",
    "wrong version number",
    "no shared cipher",
    "unsupported protocol",
)


class TlsRefused(ConfigError):
    """A TLS peer was refused (or refused us): wrong CA, expired, or issued for another host."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA that signs every peer, and this side's own certificate and key."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--cert and --key go together")
        for path in (self.ca, self.cert, self.key):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{path}: no such file")

    @property
    def serving(self) -> bool:
        """A server identity is configured: this side's listeners speak TLS."""
        return self.cert is not None

    @property
    def trusting(self) -> bool:
        """A CA is configured: this side's clients speak TLS and verify their peer."""
        return self.ca is not None

    def server_context(self) -> ssl.SSLContext | None:
        """For a listener: None without a certificate (plain TCP)."""
        if self.cert is None or self.key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        if self.ca is not None:
            # A client that shows a certificate must show one of ours; none is fine too.
            context.load_verify_locations(self.ca)
            context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def client_context(self) -> ssl.SSLContext | None:
        """For a client: None without a CA (plain TCP). The peer's name is always checked."""
        if self.ca is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert is not None and self.key is not None:
            context.load_cert_chain(self.cert, self.key)
        return context


def is_refusal(exc: BaseException) -> bool:
    """True when a TLS handshake failed because of a certificate (ours or the peer's)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLWantReadError)):
        return False  # the peer went away mid-handshake: an outage
    if isinstance(exc, ssl.SSLError):
        text = f"{exc.reason or ''} {exc}".lower()
        return any(word in text for word in _REFUSAL_WORDS)
    return False


def refusal_text(exc: BaseException, peer: str) -> str:
    """One line for a person: who refused what, and why."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or str(exc)
        return f"TLS: the certificate of {peer} is not trusted ({why}); check --ca and the peer's --cert"
    reason = getattr(exc, "reason", None) or str(exc)
    return f"TLS: {peer} refused the handshake ({reason}); check --ca, --cert and --key on both sides"
