"""Certificates for the migration channels and the TLS contexts built from them.

Both channels use the same files: the control channel (Python's ssl, mutual
TLS, TLS 1.2 at least) and CRIU's page server (GnuTLS inside CRIU:
``--tls-cacert``, ``--tls-cert``, ``--tls-key``). ``make_test_pki`` writes a
small CA and one certificate per host with ``openssl``: enough for a lab or a
test, not a replacement for an operator's PKI.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


class TlsError(Exception):
    """Certificate files missing or unusable; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    cacert: str
    cert: str
    key: str

    def check(self) -> None:
        """Every file a regular, readable file: say which one is not before anything starts."""
        for what, path in (("--tls-cacert", self.cacert), ("--tls-cert", self.cert),
                           ("--tls-key", self.key)):
            p = Path(path)
            if not p.is_file():
                raise TlsError(f"{what} {path}: not a regular file")
            if not os.access(p, os.R_OK):
                raise TlsError(f"{what} {path}: not readable")

    def criu_opts(self) -> dict:
        """The criu_opts fields (images/rpc.proto) that make CRIU's page server speak TLS."""
        return {"tls": True, "tls_cacert": os.path.abspath(self.cacert),
                "tls_cert": os.path.abspath(self.cert), "tls_key": os.path.abspath(self.key)}

    def criu_args(self) -> list[str]:
        """The same for ``criu page-server``'s command line."""
        return ["--tls", "--tls-cacert", os.path.abspath(self.cacert),
                "--tls-cert", os.path.abspath(self.cert), "--tls-key", os.path.abspath(self.key)]

    def _context(self, purpose: ssl.Purpose) -> ssl.SSLContext:
        self.check()
        server = purpose is ssl.Purpose.CLIENT_AUTH
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert, self.key)
            ctx.load_verify_locations(cafile=self.cacert)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"cannot use {self.cert} / {self.key} with CA {self.cacert}: "
                           f"{exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED  # both ends show a certificate of our CA
        return ctx

    def server_context(self) -> ssl.SSLContext:
        return self._context(ssl.Purpose.CLIENT_AUTH)

    def client_context(self) -> ssl.SSLContext:
        ctx = self._context(ssl.Purpose.SERVER_AUTH)
        ctx.check_hostname = True  # the receiver's certificate must name the address dialled
        return ctx


def _openssl(*args: str) -> None:
    res = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if res.returncode:
        raise TlsError(f"openssl {args[0]} failed: {res.stderr.strip()[-300:]}")


def make_test_pki(directory: str, hosts: dict[str, list[str]], days: int = 30) -> dict[str, TlsFiles]:
    """A CA (``ca.pem``, ``ca-key.pem``) and, per host, ``NAME.pem`` + ``NAME-key.pem``
    whose subjectAltName lists ``hosts[NAME]`` (IP addresses or DNS names).

    Keys are EC P-256 (fast to make even under emulation; GnuTLS and OpenSSL take
    them). Private keys are written 0600. An existing CA in ``directory`` is reused,
    so hosts can be added later.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca, ca_key = d / "ca.pem", d / "ca-key.pem"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    old = os.umask(0o077)
    try:
        if not ca.exists():
            _openssl("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca),
                     "-days", str(days), "-subj", "/CN=criu-ext migration CA",
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        out = {}
        for name, names in hosts.items():
            if not name.replace("-", "").replace("_", "").isalnum():
                raise TlsError(f"host name {name!r}: letters, digits, - and _ only")
            san = ",".join(("IP:" if _is_ip(n) else "DNS:") + n for n in names)
            key, crt = d / f"{name}-key.pem", d / f"{name}.pem"
            with tempfile.TemporaryDirectory() as tmp:
                csr, ext = Path(tmp) / "req.csr", Path(tmp) / "ext.cnf"
                ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                               "keyUsage=critical,digitalSignature,keyAgreement\n"
                               "extendedKeyUsage=serverAuth,clientAuth\n")
                _openssl("req", *ec, "-keyout", str(key), "-out", str(csr),
                         "-subj", f"/CN={names[0] if names else name}")
                _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                         "-CAcreateserial", "-out", str(crt), "-days", str(days),
                         "-extfile", str(ext))
            out[name] = TlsFiles(str(ca), str(crt), str(key))
        return out
    finally:
        os.umask(old)


def _is_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False
