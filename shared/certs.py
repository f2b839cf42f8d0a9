"""TLS certificates and SuperNode authentication keys for a deployment (Flower-free).

Layout of the directory this writes (0700), private keys 0600, everything else 0644:

- ``ca.crt`` / ``ca.key``: a self-signed CA (EC P-384). Keep ``ca.key`` offline: it is only
  needed to issue server certificates. SuperNodes and ``flwr`` trust ``ca.crt``.
- ``server.crt`` / ``server.key``: the SuperLink's certificate, signed by the CA, with every host
  name and IP address it is reached by as subjectAltName (TLS clients check SANs, not the CN).
- ``devices/NAME`` / ``devices/NAME.pub``: one EC P-384 key pair per device in OpenSSH format,
  the format ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register``
  read. These keys are not signed by the CA: the SuperLink trusts exactly the registered ones.

Existing files are never overwritten: running it again with new device names adds their keys,
a missing server certificate is issued by the existing CA, and an existing one must be for
the same hosts.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 5 * 365
SERVER_DAYS = 397  # the CA/Browser Forum ceiling for server certificates
_CURVE = ec.SECP384R1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


@dataclass(frozen=True)
class Credentials:
    """Paths of everything :func:`make_credentials` wrote or kept."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    device_keys: dict[str, Path]  # name -> private key; the public key is the same path + ".pub"
    created: tuple[Path, ...]

    def public_key(self, device: str) -> Path:
        return self.device_keys[device].with_name(self.device_keys[device].name + ".pub")


def device_names(spec: str) -> list[str]:
    """``"3"`` -> device-0..device-2; ``"phone,tablet"`` -> those names."""
    spec = spec.strip()
    if spec.isdigit():
        return [f"device-{i}" for i in range(int(spec))]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        if not _NAME.match(name):
            raise ValueError(
                f"device name {name!r} is not allowed: use letters, digits, '.', '_' or '-' "
                "(up to 64 characters, starting with a letter or digit)"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"device names repeat: {names}")
    return names


def make_credentials(directory: Path, hosts: list[str], devices: list[str]) -> Credentials:
    """Create (or complete) a credentials directory; see the module docstring."""
    if not hosts:
        raise ValueError("give at least one --host: the name or IP address SuperNodes connect to")
    sans = [_san(h) for h in hosts]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    (directory / "devices").mkdir(exist_ok=True)
    os.chmod(directory / "devices", 0o700)
    created: list[Path] = []
    ca_cert, ca_key = directory / "ca.crt", directory / "ca.key"
    if ca_cert.exists() != ca_key.exists():
        raise ValueError(
            f"{directory} has only one of ca.crt and ca.key: restore the other or use a new "
            "directory (a CA needs both)"
        )
    if not ca_cert.exists():
        key = ec.generate_private_key(_CURVE())
        _write_private(ca_key, _pem_key(key), created)
        _write_public(
            ca_cert, _self_signed_ca(key).public_bytes(serialization.Encoding.PEM), created
        )
    server_cert, server_key = directory / "server.crt", directory / "server.key"
    if server_cert.exists():
        existing = x509.load_pem_x509_certificate(server_cert.read_bytes())
        names = existing.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if set(names) != set(sans):
            raise ValueError(
                f"{server_cert} exists for other hosts ({', '.join(map(_show, names))}): "
                "delete server.crt and server.key to issue one for the hosts given"
            )
    else:
        ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
        key = ec.generate_private_key(_CURVE())
        cert = _server_certificate(key, ca, signer, hosts[0], sans)
        _write_private(server_key, _pem_key(key), created)
        _write_public(server_cert, cert.public_bytes(serialization.Encoding.PEM), created)
    keys = {}
    for name in devices:
        private = directory / "devices" / name
        if not private.exists():
            key = ec.generate_private_key(_CURVE())
            _write_private(private, _ssh_private(key), created)
            public = key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            _write_public(private.with_name(name + ".pub"), public + f" {name}\n".encode(), created)
        keys[name] = private
    return Credentials(directory, ca_cert, ca_key, server_cert, server_key, keys, tuple(created))


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", host):
        raise ValueError(f"host {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host)


def _show(name: x509.GeneralName) -> str:
    return str(name.value)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _self_signed_ca(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Confide deployment CA")])
    start = _now() - datetime.timedelta(minutes=5)  # tolerate small clock skew
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    signer,
    common_name: str,
    sans: list[x509.GeneralName],
) -> x509.Certificate:
    start = _now() - datetime.timedelta(minutes=5)
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(signer, hashes.SHA384())
    )


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ssh_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes, created: list[Path]) -> None:
    # O_EXCL + mode at creation: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)  # the umask may have removed bits, never added: make it exact
    created.append(path)


def _write_public(path: Path, data: bytes, created: list[Path]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o644)
    created.append(path)
