"""`flip certs DIR`: a CA, the server's TLS certificate, and one authentication key pair per site.

Written with the `cryptography` library (no openssl binary needed). The server certificate's
subject alternative names hold every name clients use plus `localhost` and `IP:127.0.0.1`, which
the SuperLink's own processes connect to. Site keys are ECDSA P-384 in OpenSSH format, which is
what Flower's SuperNode authentication reads.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flip.errors import FlipError

CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
LOOPBACK_NAMES = ("localhost", "127.0.0.1")
_VALID_DAYS = 825


@dataclass
class Issued:
    """What `write_certificates` wrote, by the party that receives it."""

    folder: Path
    server_names: list[str]
    sites: list[str]

    def handout(self) -> list[tuple[str, list[str]]]:
        """(party, files) in the order they are printed."""
        server = [CA_CERT, SERVER_CERT, SERVER_KEY] + [f"sites/{s}.pub" for s in self.sites]
        parties = [("server (flip server)", server), ("researcher (flip run)", [CA_CERT])]
        parties += [(f"site {s} (flip site)", [CA_CERT, f"sites/{s}.key"]) for s in self.sites]
        parties.append(("keep offline (signs new server certificates)", [CA_KEY]))
        return parties


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "flip"), x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _alt_names(names: list[str]) -> list[x509.GeneralName]:
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    return alt


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def server_names(extra: list[str]) -> list[str]:
    """The server certificate's names: the given ones, then the loopback names, each once."""
    names: list[str] = []
    for name in [*extra, *LOOPBACK_NAMES]:
        if name and name not in names:
            names.append(name)
    return names


def check_site_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise FlipError(f"site name {name!r}: use letters, digits, '-', '_' and '.' only")
    return name


def write_certificates(folder: Path, names: list[str], sites: list[str], overwrite: bool = False) -> Issued:
    """A CA, a server certificate for `names` (+ loopback), and an OpenSSH key pair per site."""
    folder = folder.expanduser().resolve()
    sites = [check_site_name(site) for site in sites]
    if len(set(sites)) != len(sites):
        raise FlipError(f"site names must differ, got {sites}")
    if (folder / CA_KEY).exists() and not overwrite:
        raise FlipError(f"{folder / CA_KEY} exists: certificates were already issued there (use --force to replace them)")
    (folder / "sites").mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=_VALID_DAYS)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("flip federation CA"))
        .issuer_name(_name("flip federation CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(folder / CA_KEY, _key_pem(ca_key))
    (folder / CA_CERT).write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    all_names = server_names(names)
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(all_names[0]))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(_alt_names(all_names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(folder / SERVER_KEY, _key_pem(server_key))
    (folder / SERVER_CERT).write_bytes(server.public_bytes(serialization.Encoding.PEM))

    for site in sites:
        write_site_key(folder / "sites", site)
    return Issued(folder, all_names, sites)


def write_site_key(folder: Path, site: str) -> tuple[Path, Path]:
    """`<site>.key` (OpenSSH private key) and `<site>.pub` (its public key), ECDSA P-384."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    folder.mkdir(parents=True, exist_ok=True)
    _write_private(folder / f"{site}.key", private)
    (folder / f"{site}.pub").write_bytes(public + f" flip-site-{site}\n".encode())
    return folder / f"{site}.key", folder / f"{site}.pub"


def load_site_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """A site's OpenSSH public key, or FlipError saying why it is not one Flower accepts."""
    file = path.expanduser()
    if not file.is_file():
        raise FlipError(f"{file}: no such public key file")
    try:
        key = serialization.load_ssh_public_key(file.read_bytes())
    except (ValueError, TypeError) as error:
        raise FlipError(f"{file}: not an OpenSSH public key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise FlipError(f"{file}: Flower authenticates sites with ECDSA keys (NIST curves), got {type(key).__name__}")
    return key


def check_site_private_key(path: Path, where: str) -> Path:
    """The site's OpenSSH ECDSA private key, checked before the SuperNode is started with it."""
    file = path.expanduser()
    if not file.is_file():
        raise FlipError(f"{where}: no such private key file: {file}")
    try:
        key = serialization.load_ssh_private_key(file.read_bytes(), None)
    except (ValueError, TypeError) as error:
        raise FlipError(f"{where}: {file} is not an unencrypted OpenSSH private key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FlipError(f"{where}: {file} must be an ECDSA key (ssh-keygen -t ecdsa -b 384 or flip certs)")
    return file.resolve()


def check_pem_certificate(path: Path, where: str) -> Path:
    """A PEM certificate file, checked before a daemon is started with it."""
    file = path.expanduser()
    if not file.is_file():
        raise FlipError(f"{where}: no such certificate file: {file}")
    try:
        x509.load_pem_x509_certificate(file.read_bytes())
    except ValueError as error:
        raise FlipError(f"{where}: {file} is not a PEM certificate ({error})") from None
    return file.resolve()


def check_server_certificate(cert: Path, key: Path, ca: Path, names: list[str]) -> None:
    """FlipError unless `cert` is signed by `ca`, matches `key`, and holds 127.0.0.1 and `names`."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    authority = x509.load_pem_x509_certificate(ca.read_bytes())
    try:
        certificate.verify_directly_issued_by(authority)
    except (ValueError, TypeError, Exception) as error:  # InvalidSignature has no message
        raise FlipError(f"certificate: {cert} is not signed by ca_certificate {ca} ({type(error).__name__})") from None
    try:
        private = load_pem_private_key(key.read_bytes(), None)
    except (ValueError, TypeError) as error:
        raise FlipError(f"private_key: {key} is not an unencrypted PEM private key ({error})") from None
    if private.public_key().public_numbers() != certificate.public_key().public_numbers():
        raise FlipError(f"private_key: {key} is not the key of certificate {cert}")
    try:
        alt = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        alt = x509.SubjectAlternativeName([])
    held = {str(ip) for ip in alt.get_values_for_type(x509.IPAddress)} | set(alt.get_values_for_type(x509.DNSName))
    missing = [name for name in ["127.0.0.1", *names] if name not in held]
    if missing:
        raise FlipError(
            f"certificate: {cert} holds the names {sorted(held)}, not {', '.join(missing)} "
            "(the server's own processes connect to 127.0.0.1; sites to the names they are given): `flip certs --name` adds them"
        )
