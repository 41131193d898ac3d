"""`mta dns DOMAIN --routing` and `mta dns DOMAIN --forwarding`: the records of the
node's own domains, in the format (and with the live check) of `mta dns`.

- `--routing`: a domain we receive mail for — MX to every MX host, SPF including the
  nodes (forwarded mail leaves from them), then MTA-STS and TLS-RPT. No database.
- `--forwarding`: the SRS domain (`srs.domain`: MX so bounces to SRS addresses come
  back, SPF for the rewritten envelope senders) and/or the forwarding DKIM domain
  (`routing.forwarding_domain`, default the SRS domain: the key forwarded mail is
  signed with, generated here on first use exactly as the first forward would).

deploy/install.sh prints these at the end of an installation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from mta.api.wellknown import mta_sts_records
from mta.commands._common import open_database
from mta.config import Settings
from mta.dnsrecords import routing_records

__all__ = ["forwarding_records", "mx_tlsa_records", "node_records", "routing_domain_records"]


def routing_domain_records(settings: Settings, domain: str) -> list[dict]:
    return [*routing_records(settings, domain), *mta_sts_records(settings, domain)]


async def forwarding_records(settings: Settings, domain: str) -> list[dict] | str:
    """The records `domain` needs as SRS and/or forwarding DKIM domain, or why none."""
    from mta.routing.forward import KeyStore, forwarding_domain
    from mta.store import dkimkeys

    domain = domain.strip().rstrip(".").lower()
    srs = (settings.srs.domain or "").lower()
    records = routing_records(settings, domain) if domain == srs else []
    if domain == forwarding_domain(settings):
        if not settings.secret_key:
            return "secret_key (MTA_SECRET_KEY) is not set: no forwarding key can be stored"
        async with open_database(settings) as db:
            await KeyStore(db, settings).key_for(domain, generate=True)
            async with db.session() as s:  # during a rotation: the new key and the old
                keys = await dkimkeys.published(s, domain, dkimkeys.FORWARDING,
                                                datetime.now(UTC))
        records += [{"type": "TXT", "name": f"{k.selector}._domainkey.{domain}", "ttl": 1,
                     "content": f"v=DKIM1; k={k.algorithm}; p={k.public_key}"} for k in keys]
    if not records:
        return (f"{domain} is neither srs.domain ({srs or 'unset'}) nor the forwarding "
                f"domain ({forwarding_domain(settings) or 'unset'})")
    return records


def mx_tlsa_records(settings: Settings) -> list[dict] | str:
    """DANE (RFC 7672) for mail sent to us: a `3 1 1` TLSA record (DANE-EE, the SHA-256
    of the MX certificate's public key) at `_25._tcp.<mx host>` for every MX host, from
    `listeners.mx.tls_cert` (the first certificate of the file; none configured, none
    printed). It keeps matching across renewals that keep the key. Senders use it only
    from a DNSSEC-signed zone."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from mta.dnsrecords import mx_hosts
    from mta.queue.dane import tlsa_for_certificate

    path = settings.listeners.mx.tls_cert
    if not path:
        return []
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        return f"listeners.mx.tls_cert {path}: cannot read the certificate ({exc})"
    record = str(tlsa_for_certificate(cert.public_bytes(Encoding.DER)))
    return [{"type": "TLSA", "name": f"_25._tcp.{host}", "ttl": 1, "content": record}
            for host in mx_hosts(settings)]


async def node_records(settings: Settings) -> list[dict] | str:
    """`mta dns --node`: what this deployment itself publishes, once: the SPF include
    target every routing and sending domain includes (with its content), the SRS
    domain's MX and SPF, the forwarding DKIM key, and the MX hosts' TLSA records."""
    from mta.dnsrecords import spf_include, spf_include_value

    records = [{"type": "TXT", "name": spf_include(settings), "ttl": 1,
                "content": spf_include_value(settings)}]
    from mta.routing.forward import forwarding_domain

    for domain in dict.fromkeys(d for d in ((settings.srs.domain or "").lower(),
                                            forwarding_domain(settings) or "") if d):
        more = await forwarding_records(settings, domain)
        if isinstance(more, str):
            return more
        records += [r for r in more if r not in records]
    tlsa = mx_tlsa_records(settings)
    if isinstance(tlsa, str):
        return tlsa
    return records + tlsa
