"""The OpenAPI document: served by the API, valid (openapi-spec-validator), complete (every
route under /client/v4 is in it and nothing else), and true to the live server
(schemathesis: generated requests with a valid token find no 5xx, no undocumented status
and no response that violates its schema).

The schemathesis run is bounded (MAX_EXAMPLES per operation, derandomized so a failure
reproduces) and uses the real account and zone ids for half of the cases, so handlers
run past authorisation on real rows, with generated bodies and queries.
"""

from __future__ import annotations

import os

import httpx
import hypothesis
import pytest
from starlette.routing import Route

from mta.api.openapi import document
from tests.harness.node import free_port

schemathesis = pytest.importorskip("schemathesis")
validate = pytest.importorskip("openapi_spec_validator").validate

MAX_EXAMPLES = int(os.environ.get("MTA_SCHEMATHESIS_EXAMPLES", "25"))
ALL = ("email_routing:read", "email_routing:edit", "email_sending:send",
       "email_sending:edit", "analytics:read", "account:admin")


def test_the_document_is_served_and_valid(admin):
    r = httpx.get(f"{admin.api_url}/openapi.json", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    served = r.json()
    assert served == document()
    validate(served)
    assert served["openapi"].startswith("3.1")


def test_every_route_is_documented_and_nothing_more(admin):
    from mta.api.app import build_app

    app = build_app(admin.server.listener.server.config.app.state.ctx)
    served: set[tuple[str, str]] = set()
    for route in app.router.routes:
        if isinstance(route, Route) and route.path.startswith("/client/v4/"):
            for method in route.methods or ():
                if method != "HEAD":
                    served.add((route.path.removeprefix("/client/v4"), method.lower()))
    documented = {(path, method) for path, item in document()["paths"].items()
                  for method in item if method != "parameters"}
    assert served == documented


def _checks():
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    return [not_a_server_error, status_code_conformance, content_type_conformance,
            response_schema_conformance]


def _cases(operation):
    """Valid requests and invalid ones (schemathesis' negative mode): both must get a
    documented answer, never a 5xx."""
    from schemathesis import GenerationMode

    return hypothesis.strategies.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                                        operation.as_strategy(GenerationMode.NEGATIVE))


def _resources(admin) -> dict[str, str]:
    """One of each resource, so cases on their paths reach real rows."""
    c = admin.http(*ALL)
    acct, zone = f"/accounts/{admin.account_id}/email", f"/zones/{admin.zone_id}/email"

    def post(path: str, body: dict) -> dict:
        r = c.post(path, json=body)
        assert r.status_code == 200, r.text
        return r.json()["result"]

    address = post(f"{acct}/routing/addresses", {"email": "ops@dest.test"})
    rule = post(f"{zone}/routing/rules", {
        "name": "ops", "matchers": [{"type": "literal", "field": "to",
                                     "value": "ops@example.test"}],
        "actions": [{"type": "forward", "value": ["ops@dest.test"]}]})
    suppression = post(f"{acct}/sending/suppressions", {"email": "gone@dest.test"})
    subdomain = post(f"{zone}/sending/subdomains", {"name": "send.example.test"})
    # A loopback port nobody listens on: `test` is refused at once, never waits.
    webhook = post(f"{acct}/webhooks", {"url": f"http://127.0.0.1:{free_port()}/hook"})
    # A DMARC report about the account's zone, as the MX stores one from its mailbox.
    report = admin.db_run(_dmarc_report(admin.zone_name))
    # and a TLS report under the same id: {report_id} names one in both paths
    admin.db_run(_tls_report(admin.zone_name, report))
    return {"address_id": address["id"], "rule_id": rule["id"],
            "suppression_id": suppression["id"], "tag": subdomain["tag"],
            "webhook_id": webhook["id"], "report_id": str(report)}


def _dmarc_report(domain: str):
    from datetime import UTC, datetime

    from mta.store.models import DmarcReportReceived

    async def add(s) -> int:
        row = DmarcReportReceived(
            filename="r.xml.gz", status="ok", org_name="google.com", report_id="r-1",
            policy_domain=domain, period_begin=datetime(2026, 12, 6, tzinfo=UTC),
            period_end=datetime(2026, 12, 6, 23, 59, 59, tzinfo=UTC), messages=1,
            records=[{"source_ip": "192.0.2.1", "count": 1, "disposition": "none",
                      "dkim": "pass", "spf": "pass", "header_from": domain}])
        s.add(row)
        await s.flush()
        return row.id
    return add


def _tls_report(domain: str, report_id: int):
    from datetime import UTC, datetime

    from mta.store.models import TlsReportReceived

    async def add(s) -> None:
        s.add(TlsReportReceived(
            id=report_id, filename="r.json.gz", status="ok", org_name="Company-X",
            report_id="t-1", period_begin=datetime(2026, 12, 6, tzinfo=UTC),
            period_end=datetime(2026, 12, 6, 23, 59, 59, tzinfo=UTC), successful=1,
            failed=0, policies=[{"policy_type": "sts", "policy_domain": domain,
                                 "mx_host": [], "successful": 1, "failed": 0,
                                 "failures": {}}]))
    return add


def test_schemathesis_finds_no_server_error_and_no_schema_violation(admin):
    token = admin.token(*ALL)
    schema = schemathesis.openapi.from_url(f"{admin.api_url}/openapi.json")
    real = {"account_id": admin.account_id, "zone_id": admin.zone_id, **_resources(admin)}
    checks = _checks()
    failures: list[str] = []
    statuses: dict[str, set[int]] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    # Deletes last, so the other calls on a resource's path still find it.
    for operation in sorted(operations, key=lambda op: op.method.upper() == "DELETE"):

        @hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                             derandomize=True, print_blob=False,
                             suppress_health_check=list(hypothesis.HealthCheck))
        @hypothesis.given(case=_cases(operation), use_real=hypothesis.strategies.booleans())
        def run(case, use_real: bool) -> None:
            if use_real and case.path_parameters:
                for name, value in real.items():
                    if name in case.path_parameters:
                        case.path_parameters[name] = value
            headers = {"Authorization": f"Bearer {token}"}
            response = case.call(base_url=admin.api_url, timeout=10, headers=headers)
            statuses.setdefault(case.operation.label, set()).add(response.status_code)
            case.validate_response(response, checks=checks, headers=headers)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failure
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
    # The run reached the handlers: every operation was called, and most answered 200 at
    # least once (on the real account and zone), so their success schemas were checked.
    # (schemathesis leaves out the operation that serves the schema it loaded)
    assert set(statuses) == {f"{method.upper()} {path}"
                             for path, item in document()["paths"].items()
                             for method in item if method != "parameters"
                             } - {"GET /openapi.json"}
    succeeded = {label for label, codes in statuses.items() if 200 in codes}
    reads = {label for label in statuses if label.startswith("GET ")}
    assert reads <= succeeded, {label: sorted(statuses[label]) for label in reads - succeeded}
    assert len(succeeded) >= len(statuses) * 2 // 3, sorted(set(statuses) - succeeded)


def test_a_rule_has_matchers_or_a_pattern():
    jsonschema = pytest.importorskip("jsonschema")
    schema = document()["components"]["schemas"]["RuleInput"]
    drop = [{"type": "drop"}]
    literal = [{"type": "literal", "field": "to", "value": "a@example.com"}]
    jsonschema.validate({"matchers": literal, "actions": drop}, schema)
    jsonschema.validate({"pattern": {"type": "wildcard", "field": "to",
                                     "value": "sales-*@example.com"}, "actions": drop}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"actions": drop}, schema)
