"""`evcharge certs init`: a local CA and a certificate per component, for people without a PKI.

    <dir>/ca.pem, ca.key            the CA every role trusts (--ca); its key stays here, 0600
    <dir>/central.pem, central.key  central's monitor port, HTTP API and web page
    <dir>/kafka.pem, kafka.key      the broker's SASL_SSL listener
    <dir>/client.pem, client.key    a client certificate any role may show (--cert/--key)

Keys are 0600. Server certificates name every host given (`--host`, default this
machine's loopback names), so a client that checks the name (all of ours do) accepts
them there and nowhere else.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_DAYS = 825
COMPONENTS = ("central", "kafka")


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evcharge"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


class LocalCa:
    """A CA kept in a folder: created once, then it signs what it is asked to."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cert_path = folder / "ca.pem"
        self.key_path = folder / "ca.key"

    def exists(self) -> bool:
        return self.cert_path.is_file() and self.key_path.is_file()

    def create(self, days: int = DEFAULT_DAYS) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = _name("evcharge local CA")
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .sign(key, hashes.SHA256())
        )
        _write_key(self.key_path, key)
        _write_cert(self.cert_path, cert)

    def issue(
        self,
        name: str,
        hosts: Sequence[str] = DEFAULT_HOSTS,
        *,
        days: int = DEFAULT_DAYS,
        valid_from: datetime.datetime | None = None,
        folder: Path | None = None,
    ) -> Issued:
        """`name`.pem and `name`.key for a component reached at `hosts` (server and client use).

        `valid_from` and `days` may put the certificate wholly in the past: tests need an
        expired one.
        """
        ca_key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        start = valid_from or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_san(hosts), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        where = folder or self.folder
        where.mkdir(parents=True, exist_ok=True)
        issued = Issued(where / f"{name}.pem", where / f"{name}.key")
        _write_key(issued.key, key)
        _write_cert(issued.cert, cert)
        return issued


def init(folder: Path, hosts: Sequence[str] = DEFAULT_HOSTS, *, force: bool = False) -> list[Path]:
    """The CA (kept if it exists, unless `force`) and a certificate for each component."""
    ca = LocalCa(folder)
    if force or not ca.exists():
        ca.create()
    written = [ca.cert_path]
    for component in (*COMPONENTS, "client"):
        issued = ca.issue(component, hosts)
        written += [issued.cert, issued.key]
    return written
