"""`qsc pki`: create the deployment CA, issue component certificates, inspect certificates."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from crypto import pki
from crypto.errors import PkiError

_INIT_EPILOG = """\
example:
  qsc pki init --dir /etc/qsc/pki --trust-domain prod.example.org

The CA key (ca.key) is written 0600. Keep it offline once the deployment's certificates exist.
"""

_ISSUE_EPILOG = f"""\
roles: {", ".join(pki.ROLES)}

examples:
  qsc pki issue alpha web1.example.org --dir /etc/qsc/pki --ip 10.0.0.5
  qsc pki issue cortex 10.0.0.2 --dir /etc/qsc/pki --dns cortex.internal --out-dir ./cortex

Writes ROLE-HOST.crt, ROLE-HOST.key (0600) and ca.crt into --out-dir (default: --dir).
"""


_T = TypeVar("_T")
if TYPE_CHECKING:  # subscriptable only in the stubs; Any: the parser class is qsc's own
    SubParsers = argparse._SubParsersAction[Any]


def _arg(check: Callable[[str], _T]) -> Callable[[str], _T]:
    """Adapt a validator raising PkiError into an argparse type (usage error, exit code 2)."""

    def convert(text: str) -> _T:
        try:
            return check(text)
        except PkiError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(check, "__name__", "value")
    return convert


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise PkiError(f"{text!r} is not a whole number of days") from None
    if not 1 <= days <= pki.MAX_DAYS:
        raise PkiError(f"{days} days is out of range (1..{pki.MAX_DAYS})")
    return days


def register(groups: SubParsers) -> None:
    parser = groups.add_parser(
        "pki",
        help="deployment CA and component certificates",
        description="Create the deployment CA, issue component certificates, inspect them.",
    )
    parser.set_defaults(group_parser=parser)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    init = sub.add_parser(
        "init",
        help="create the deployment CA",
        description="Create an ECDSA P-256 CA for one trust domain. Refuses to overwrite a CA.",
        epilog=_INIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("--dir", type=Path, required=True, help="directory for ca.crt and ca.key")
    init.add_argument(
        "--trust-domain",
        type=_arg(pki.validate_trust_domain),
        required=True,
        metavar="TD",
        help="lowercase DNS-style name of the deployment, e.g. prod.example.org; "
        "certificates name spiffe://TD/ROLE/HOST",
    )
    init.add_argument(
        "--days",
        type=_arg(_days),
        default=pki.DEFAULT_CA_DAYS,
        metavar="N",
        help=f"CA validity in days (default {pki.DEFAULT_CA_DAYS})",
    )
    init.set_defaults(handler=_init)

    issue = sub.add_parser(
        "issue",
        help="issue a certificate for one component instance",
        description="Issue an ECDSA P-256 certificate for ROLE on HOST, valid for TLS server "
        "and client authentication, with URI SAN spiffe://TD/ROLE/HOST.",
        epilog=_ISSUE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    issue.add_argument(
        "role", type=_arg(pki.validate_role), metavar="ROLE", help="one of: " + ", ".join(pki.ROLES)
    )
    issue.add_argument(
        "host",
        type=_arg(pki.normalize_host),
        metavar="HOST",
        help="host name or IPv4 address of the instance (also added as a DNS or IP SAN)",
    )
    issue.add_argument("--dir", type=Path, required=True, help="the CA directory (from pki init)")
    issue.add_argument(
        "--dns",
        type=_arg(pki.normalize_dns_name),
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS SAN (repeatable)",
    )
    issue.add_argument(
        "--ip",
        type=_arg(pki.parse_ip),
        action="append",
        default=[],
        metavar="ADDR",
        help="extra IP SAN, IPv4 or IPv6 (repeatable)",
    )
    issue.add_argument(
        "--days",
        type=_arg(_days),
        default=pki.DEFAULT_LEAF_DAYS,
        metavar="N",
        help=f"validity in days (default {pki.DEFAULT_LEAF_DAYS}; never past the CA's expiry)",
    )
    issue.add_argument(
        "--out-dir",
        type=Path,
        metavar="DIR",
        help="where to write the files (default: the CA directory)",
    )
    issue.add_argument(
        "--force", action="store_true", help="replace an existing certificate and key"
    )
    issue.set_defaults(handler=_issue)

    show = sub.add_parser(
        "show",
        help="describe a certificate",
        description="Print a certificate's subject, SANs, QSC identity, validity and fingerprint.",
    )
    show.add_argument("file", type=Path, metavar="FILE", help="PEM or DER certificate file")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(handler=_show)


def _mode(path: Path) -> str:
    return f"{path.stat().st_mode & 0o777:04o}"


def _init(args: argparse.Namespace) -> int:
    ca = pki.init_ca(args.dir, args.trust_domain, days=args.days)
    key_path = args.dir / pki.CA_KEY_FILE
    print(f"created CA for trust domain {ca.trust_domain} in {args.dir}")
    print(f"  certificate  {args.dir / pki.CA_CERT_FILE}")
    print(f"  private key  {key_path} (mode {_mode(key_path)})")
    print(f"  valid until  {ca.cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC ({args.days} days)")
    print(f"  SHA-256      {pki.fingerprint_sha256(ca.cert)}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    ca = pki.load_ca(args.dir)
    leaf = pki.issue_leaf(
        ca, args.role, args.host, dns=args.dns, ips=[str(a) for a in args.ip], days=args.days
    )
    files = pki.write_leaf(leaf, args.out_dir or args.dir, ca.cert, overwrite=args.force)
    info = pki.describe(leaf.cert)
    print(f"issued {leaf.identity.spiffe_id}")
    print(f"  certificate  {files.cert}")
    print(f"  private key  {files.key} (mode {_mode(files.key)})")
    print(f"  CA           {files.ca_cert}")
    print(f"  SANs         {_sans(info)}")
    capped = " (capped by the CA's expiry)" if leaf.capped_by_ca else ""
    print(f"  valid until  {info.not_after:%Y-%m-%d %H:%M} UTC{capped}")
    return 0


def _sans(info: pki.CertificateInfo) -> str:
    sans = [f"URI:{u}" for u in info.uris]
    sans += [f"DNS:{d}" for d in info.dns_names]
    sans += [f"IP:{a}" for a in info.ip_addresses]
    return ", ".join(sans) or "(none)"


def _show(args: argparse.Namespace) -> int:
    info = pki.describe(pki.load_certificate(args.file))
    if args.json:
        print(json.dumps(info.to_json(), indent=2))
        return 0
    rows: list[tuple[str, str]] = [
        ("subject", info.subject),
        ("issuer", info.issuer),
        ("serial", info.serial),
        ("CA", "yes" if info.is_ca else "no"),
        ("trust domain", info.trust_domain or "(not a QSC certificate)"),
    ]
    if info.identity:
        rows += [
            ("role", info.identity.role),
            ("host", info.identity.host),
            ("SPIFFE ID", info.identity.spiffe_id),
        ]
    rows += [
        ("URI SANs", ", ".join(info.uris) or "-"),
        ("DNS SANs", ", ".join(info.dns_names) or "-"),
        ("IP SANs", ", ".join(info.ip_addresses) or "-"),
        ("not before", f"{info.not_before:%Y-%m-%d %H:%M:%S} UTC"),
        ("not after", f"{info.not_after:%Y-%m-%d %H:%M:%S} UTC"),
        ("days left", "EXPIRED" if info.expired else str(info.days_left)),
        ("key", info.key_type),
        ("key usage", ", ".join(info.key_usage) or "-"),
        ("ext key usage", ", ".join(info.extended_key_usage) or "-"),
        ("SHA-256", info.fingerprint_sha256),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0
