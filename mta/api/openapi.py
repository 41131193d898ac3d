"""The OpenAPI 3.1 document of the whole HTTP API, served at GET /client/v4/openapi.json.

One hand-maintained place: every route the app serves under /client/v4 has an operation
here with its parameters, request body and response schemas (tests/api/test_openapi.py
checks that the routes and the document agree, validates the document with
openapi-spec-validator and runs schemathesis against a live server). Response schemas
describe what the handlers write (mta/api/*.py); unknown extra keys are allowed, as the
reference's SDK allows them.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mta import __version__ as _version
from mta.observe.analytics import DIMENSIONS

__all__ = ["document", "routes"]

S = dict[str, Any]
_STR: S = {"type": "string"}
_NSTR: S = {"type": ["string", "null"]}
_BOOL: S = {"type": "boolean"}
_INT: S = {"type": "integer"}


def _ref(name: str) -> S:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: S, required: tuple[str, ...] = (), **extra: Any) -> S:
    out: S = {"type": "object", "properties": props, **extra}
    if required:
        out["required"] = list(required)
    return out


def _arr(items: S) -> S:
    return {"type": "array", "items": items}


_MESSAGE = _obj({"code": _INT, "message": _STR, "documentation_url": _STR,
                 "source": _obj({"pointer": _STR})}, ("code", "message"))
_PAGE_INFO = _obj({"page": _INT, "per_page": _INT, "count": _INT, "total_count": _INT,
                   "total_pages": _INT}, ("page", "per_page", "count", "total_count"))
_SCOPE = _obj({"type": {"enum": ["account", "sending_domain"]}, "value": _STR}, ("type",))
_DNS_RECORD = _obj({"type": _STR, "name": _STR, "content": _STR, "priority": _INT,
                    "ttl": _INT}, ("type", "name", "content"))
_MATCHER = _obj({"type": {"type": "string", "enum": ["literal", "all"]},
                 "field": {"type": "string", "enum": ["to"]}, "value": _STR}, ("type",))
# Ours (issue 14): a pattern rule's extension key; null on a literal rule.
_PATTERN = {"anyOf": [{"type": "null"}, _obj({
    "type": {"type": "string", "enum": ["wildcard", "regex"]},
    "field": {"type": "string", "enum": ["to"]},
    "value": {"type": "string", "maxLength": 256}}, ("type", "value"))]}
_ACTION = _obj({"type": {"type": "string", "enum": ["forward", "worker", "drop"]},
                "value": _arr(_STR)}, ("type",))
_ADDRESS_LIST = {"anyOf": [_STR, _arr(_STR)]}
_SENDER = {"anyOf": [_STR, _obj({"address": _STR, "name": _STR}, ("address",))]}

SCHEMAS: dict[str, S] = {
    "Message": _MESSAGE,
    "Error": {"type": "object", "required": ["success", "errors", "messages"], "properties": {
        "success": {"const": False}, "errors": _arr(_MESSAGE), "messages": _arr(_MESSAGE),
        "result": {"type": "null"}}},
    "Envelope": _obj({"success": {"const": True}, "errors": _arr(_MESSAGE),
                      "messages": _arr(_MESSAGE)}, ("success", "errors", "messages")),
    "PageInfo": _PAGE_INFO,
    "RoutingSettings": _obj({
        "id": _STR, "tag": _STR, "name": _STR, "enabled": _BOOL, "skip_wizard": _BOOL,
        "status": {"enum": ["ready", "unconfigured", "misconfigured", "misconfigured/locked",
                            "unlocked"]},
        "support_subaddress": _BOOL, "created": _NSTR, "modified": _NSTR},
        ("id", "name", "enabled", "status")),
    "DnsRecord": _DNS_RECORD,
    "DnsCheck": _obj({"errors": _arr(_obj({"code": _STR, "missing": _DNS_RECORD})),
                      "record": _arr(_DNS_RECORD)}, ("errors", "record")),
    "Matcher": _MATCHER,
    "Action": _ACTION,
    "Rule": _obj({"id": _STR, "tag": _STR, "name": _STR, "enabled": _BOOL,
                  "priority": _INT, "matchers": _arr(_MATCHER), "actions": _arr(_ACTION),
                  "source": _STR, "zone": _obj({"name": _STR, "tag": _STR}),
                  "pattern": _PATTERN},
                 ("id", "name", "enabled", "matchers", "actions")),
    "RuleInput": _obj({"matchers": _arr(_MATCHER), "actions": _arr(_ACTION), "name": _STR,
                       "enabled": _BOOL, "priority": {"type": "number", "minimum": 0},
                       "source": _STR, "pattern": _PATTERN}, ("actions",),
                      # matchers, or (ours) a pattern in their place
                      anyOf=[{"required": ["matchers"]}, {"required": ["pattern"]}]),
    "Address": _obj({"id": _STR, "tag": _STR, "email": _STR, "created": _NSTR,
                     "modified": _NSTR, "verified": _NSTR}, ("id", "email", "verified")),
    "SendingSubdomain": _obj({
        "tag": _STR, "name": _STR, "enabled": _BOOL, "created": _NSTR, "modified": _NSTR,
        "dkim_selector": _STR, "return_path_domain": _STR,
        "drop_suppressed_recipients": _BOOL, "preview_enabled": _BOOL}, ("tag", "name")),
    "Suppression": _obj({"id": _STR, "email": _STR, "reason": _STR, "created_at": _NSTR,
                         "expires_at": _NSTR, "read_only": _BOOL, "note": _NSTR,
                         "scope": _SCOPE}, ("id", "email", "reason", "scope")),
    "SuppressionRef": _obj({"id": _STR, "scope": _SCOPE}, ("id", "scope")),
    "SuppressionInput": _obj({"email": _STR, "note": _NSTR, "expires_at": _NSTR,
                              "scope": _SCOPE}, ("email",)),
    "BulkResult": _obj({k: _INT for k in ("total", "processed", "deduplicated", "invalid",
                                          "errors", "skipped")} | {
        "items": _arr(_obj({"index": _INT, "status": _STR, "email": _STR, "id": _STR,
                            "error": _STR, "scope": _SCOPE}, ("index", "status")))},
        ("total", "processed", "items")),
    "SendInput": _obj({
        "from": _SENDER, "to": _ADDRESS_LIST, "cc": _ADDRESS_LIST, "bcc": _ADDRESS_LIST,
        "reply_to": {"anyOf": [_ADDRESS_LIST, _SENDER]}, "subject": _STR, "text": _STR,
        "html": _STR, "headers": {"type": "object", "additionalProperties": _STR},
        "attachments": _arr(_obj({"content": _STR, "filename": _STR, "type": _STR,
                                  "disposition": {"enum": ["attachment", "inline"]},
                                  "content_id": _STR}, ("content", "filename")))},
        ("from", "to", "subject")),
    "SendRawInput": _obj({"from": _STR, "recipients": _arr(_STR), "mime_message": _STR},
                         ("from", "recipients", "mime_message")),
    "SendResult": _obj({"delivered": _arr(_STR), "permanent_bounces": _arr(_STR),
                        "queued": _arr(_STR), "message_id": _NSTR,
                        "suppressed_recipients": _arr(_STR)},
                       ("delivered", "permanent_bounces", "queued", "message_id")),
    "ActivityEvent": _obj({
        "id": _STR, "datetime": _STR, "direction": {"enum": ["inbound", "outbound"]},
        "status": _STR, "eventType": {"enum": ["incoming", "forward", "reply", "newEmail"]},
        "from": _NSTR, "to": _NSTR, "envelopeTo": _NSTR, "subject": _NSTR,
        "messageId": _NSTR, "queueId": _NSTR, "sessionId": _NSTR, "sendingDomain": _NSTR,
        "recipientDomain": _NSTR, "zoneId": _NSTR, "ruleMatched": _NSTR, "action": _NSTR,
        "spf": _NSTR, "dkim": _NSTR, "dmarc": _NSTR, "arc": _NSTR, "errorCause": _NSTR,
        "errorDetail": _NSTR, "isNDR": {"enum": [0, 1]},
        "details": {"type": ["object", "null"]}},
        ("id", "datetime", "direction", "status", "eventType")),
    "ActivityGroup": _obj({"count": _INT, "dimensions": {
        "type": "object", "additionalProperties": {"type": ["string", "integer", "null"]}}},
        ("count", "dimensions")),
    "AuditEntry": _obj({
        "id": _STR, "when": _STR, "action": _obj({"type": _STR, "result": _BOOL}, ("type",)),
        "actor": _obj({"id": _STR, "type": _STR}, ("id", "type")), "interface": _NSTR,
        "owner": _obj({"id": _NSTR}), "resource": _obj({"id": _NSTR, "type": _STR}),
        "oldValueJson": {}, "newValueJson": {}}, ("id", "when", "action", "actor", "resource")),
    "DmarcReportDay": _obj({
        "day": _STR, "policy_domain": _STR, "reports": _INT, "reporters": _arr(_STR),
        "messages": _INT, "sources": _INT, "dmarc_pass": _INT, "spf_pass": _INT,
        "spf_fail": _INT, "dkim_pass": _INT, "dkim_fail": _INT},
        ("day", "policy_domain", "reports", "messages", "sources", "dmarc_pass")),
    "DmarcReport": _obj({
        "id": _INT, "received_at": _STR, "status": {"enum": ["ok", "invalid"]},
        "error": _NSTR, "org_name": _NSTR, "report_id": _NSTR, "policy_domain": _NSTR,
        "begin": _NSTR, "end": _NSTR, "messages": _INT, "filename": _STR,
        "message_id": _NSTR, "records": _arr(_obj({}))},
        ("id", "received_at", "status", "messages")),
    "TlsReportDay": _obj({
        "day": _STR, "org_name": _NSTR, "policy_domain": _STR, "policy_type": _STR,
        "reports": _INT, "successful": _INT, "failed": _INT,
        "failures": {"type": "object", "additionalProperties": _INT}},
        ("day", "policy_domain", "policy_type", "reports", "successful", "failed")),
    "TlsReport": _obj({
        "id": _INT, "received_at": _STR, "status": {"enum": ["ok", "invalid"]},
        "error": _NSTR, "org_name": _NSTR, "report_id": _NSTR, "begin": _NSTR,
        "end": _NSTR, "successful": _INT, "failed": _INT, "policy_domains": _arr(_STR),
        "filename": _STR, "message_id": _NSTR, "policies": _arr(_obj({}))},
        ("id", "received_at", "status", "successful", "failed")),
    "Webhook": _obj({
        "id": _STR, "account_id": _STR, "url": _STR, "event_types": _arr(_STR),
        "description": _NSTR, "enabled": _BOOL, "created_at": _NSTR,
        "secret": _STR, "deliveries": _obj({
            "pending": _INT, "delivered": _INT, "failed": _INT, "last_attempt_at": _NSTR,
            "last_status_code": {"type": ["integer", "null"]}, "last_error": _NSTR})},
        ("id", "url", "event_types", "enabled")),
    "WebhookInput": _obj({"url": _STR, "event_types": _arr(_STR), "description": _NSTR},
                         ("url",)),
    "WebhookTest": _obj({"id": _STR, "ok": _BOOL, "status_code": {"type": ["integer", "null"]},
                         "error": _NSTR, "duration_ms": {"type": "number"}},
                        ("id", "ok", "status_code")),
    "WebhookDelivery": _obj({
        "id": _INT, "event_id": _STR, "type": _STR, "message_id": _NSTR, "recipient": _NSTR,
        "status": {"enum": ["pending", "delivered", "failed"]}, "attempts": _INT,
        "last_status_code": {"type": ["integer", "null"]}, "last_error": _NSTR,
        "last_attempt_at": _NSTR, "created_at": _NSTR, "next_attempt_at": _NSTR,
        "finished_at": _NSTR},
        ("id", "event_id", "type", "status", "attempts")),
}


def _ok(result: S, info: S | None = None) -> S:
    props: S = {"result": result}
    if info is not None:
        props["result_info"] = info
    return {"allOf": [_ref("Envelope"), _obj(props, ("result",))]}


def _json(schema: S) -> S:
    return {"content": {"application/json": {"schema": schema}}}


_ERRORS = {"400": "invalid request", "401": "missing or invalid token",
           "403": "the token may not do this", "404": "no such resource"}


def _op(summary: str, tag: str, result: S | None, *, info: S | None = None,
        body: S | None = None, body_required: bool = False, query: list[S] | None = None,
        extra_errors: dict[str, str] | None = None, secure: bool = True,
        bare: bool = False) -> S:
    ok_schema = _ref("Envelope") if bare else _ok(result or {}, info)
    responses: S = {"200": {"description": "success", **_json(ok_schema)}}
    for code, text in (_ERRORS | (extra_errors or {}) if secure else {}).items():
        responses[code] = {"description": text, **_json(_ref("Error"))}
    op: S = {"summary": summary, "tags": [tag], "responses": responses}
    if query:
        op["parameters"] = query
    if body is not None:
        op["requestBody"] = {"required": body_required, **_json(body)}
    if not secure:
        op["security"] = []
    return op


def _q(name: str, schema: S, description: str = "") -> S:
    p: S = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        p["description"] = description
    return p


_PAGE = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
_ADMIN_PAGING = [_q("page", _PAGE), _q("per_page", {"type": "integer", "minimum": 5,
                                                     "maximum": 50})]
_TIME = {"type": "string", "format": "date-time"}
_DMARC_QUERY = [_q("days", {"type": "integer", "minimum": 1, "maximum": 366},
                   "how far back, by time of receipt (default 7)"),
                _q("domain", _STR, "one policy domain")]
_ACTIVITY_QUERY = [
    _q("since", _TIME, "start of the range, inclusive (default: until - 24h)"),
    _q("until", _TIME, "end of the range, exclusive (default: now)"),
    _q("status", _STR, "e.g. Delivered, deliveryFailed, Rejected"),
    _q("direction", {"enum": ["inbound", "outbound"]}),
    _q("event_type", {"enum": ["incoming", "forward", "reply", "newEmail"]}),
    *(_q(n, _STR) for n in ("domain", "sending_domain", "recipient_domain", "from", "to",
                            "message_id", "zone_id", "rule_id", "action", "spf", "dkim",
                            "dmarc", "arc")),
]
_NAME_BODY = _obj({"name": _STR})
_SETTINGS_BODY = _obj({"enabled": _BOOL, "skip_wizard": _BOOL, "support_subaddress": _BOOL})
_CATCH_ALL_BODY = _obj({"matchers": _arr(_MATCHER), "actions": _arr(_ACTION), "name": _STR,
                        "enabled": _BOOL}, ("matchers", "actions"))


def _paths() -> dict[str, S]:
    z, a = "/zones/{zone_id}/email", "/accounts/{account_id}/email"
    rt, sub = "Email Routing", "Email Sending"
    settings = _ref("RoutingSettings")
    change = {"body": _NAME_BODY}
    rule, rules = _ref("Rule"), _arr(_ref("Rule"))
    page = _ref("PageInfo")
    sup_list_q = [_q("cursor", _STR), _q("per_page", {"type": "integer", "minimum": 1,
                                                      "maximum": 1000}),
                  _q("email", _STR), _q("reason", {"enum": ["manual", "complaint",
                                                            "hard_bounce", "soft_bounce",
                                                            "policy"]}),
                  _q("scope_type", {"enum": ["account", "sending_domain"]}),
                  _q("scope_value", _STR), _q("search", _STR)]
    return {
        f"{z}/routing": {
            "get": _op("Get Email Routing settings", rt, settings),
            "put": _op("Update Email Routing settings", rt, settings, body=_SETTINGS_BODY),
            "patch": _op("Edit Email Routing settings", rt, settings, body=_SETTINGS_BODY)},
        f"{z}/routing/enable": {"post": _op("Enable Email Routing", rt, settings, **change)},
        f"{z}/routing/disable": {"post": _op("Disable Email Routing", rt, settings, **change)},
        f"{z}/routing/unlock": {"post": _op("Unlock Email Routing records", rt, settings,
                                            **change)},
        f"{z}/routing/dns": {
            "get": _op("Email Routing DNS records (with ?subdomain=, their live check)", rt,
                       {"anyOf": [_arr(_ref("DnsRecord")), _ref("DnsCheck")]}, info=page,
                       query=[_q("subdomain", _STR)]),
            "post": _op("Enable Email Routing (optionally for a subdomain)", rt, settings,
                        **change),
            "patch": _op("Unlock Email Routing records", rt, settings, **change),
            "delete": _op("Disable Email Routing", rt, settings, **change)},
        f"{z}/routing/rules": {
            "get": _op("List routing rules", rt, rules, info=page,
                       query=[*_ADMIN_PAGING, _q("enabled", _BOOL)]),
            "post": _op("Create a routing rule", rt, rule, body=_ref("RuleInput"),
                        body_required=True)},
        f"{z}/routing/rules/catch_all": {
            "get": _op("Get the catch-all rule", rt, rule),
            "put": _op("Update the catch-all rule", rt, rule, body=_CATCH_ALL_BODY,
                       body_required=True)},
        f"{z}/routing/rules/{{rule_id}}": {
            "get": _op("Get a routing rule", rt, rule),
            "put": _op("Update a routing rule", rt, rule, body=_ref("RuleInput"),
                       body_required=True),
            "delete": _op("Delete a routing rule", rt, rule)},
        f"{a}/routing/rules": {
            "get": _op("List the account's routing rules", rt, rules, info=page,
                       query=[*_ADMIN_PAGING, _q("enabled", _BOOL)])},
        f"{a}/routing/addresses": {
            "get": _op("List destination addresses", rt, _arr(_ref("Address")), info=page,
                       query=[*_ADMIN_PAGING, _q("verified", _BOOL),
                              _q("direction", {"enum": ["asc", "desc"]})]),
            "post": _op("Create a destination address", rt, _ref("Address"),
                        body=_obj({"email": _STR}, ("email",)), body_required=True)},
        f"{a}/routing/addresses/{{address_id}}": {
            "get": _op("Get a destination address", rt, _ref("Address")),
            "patch": _op("Mark a destination address unverified", rt, _ref("Address"),
                         body=_obj({"status": {"enum": ["verified", "unverified"]}},
                                   ("status",)), body_required=True),
            "delete": _op("Delete a destination address", rt, _ref("Address"))},
        f"{z}/sending/subdomains": {
            "get": _op("List sending subdomains", sub, _arr(_ref("SendingSubdomain")),
                       info=page),
            "post": _op("Onboard a sending (sub)domain", sub, _ref("SendingSubdomain"),
                        body=_obj({"name": _STR}, ("name",)), body_required=True)},
        f"{z}/sending/subdomains/{{tag}}": {
            "get": _op("Get a sending subdomain", sub, _ref("SendingSubdomain")),
            "patch": _op("Edit a sending subdomain", sub, _ref("SendingSubdomain"),
                         body=_obj({"drop_suppressed_recipients": _BOOL,
                                    "preview_enabled": _BOOL})),
            "delete": _op("Delete a sending subdomain", sub, None, bare=True)},
        f"{z}/sending/subdomains/{{tag}}/dns": {
            "get": _op("DNS records of a sending subdomain", sub, _arr(_ref("DnsRecord")),
                       info=page)},
        f"{a}/sending/suppressions": {
            "get": _op("List suppressions (cursor pagination)", sub,
                       _arr(_ref("Suppression")), query=sup_list_q,
                       info=_obj({"count": _INT, "per_page": _INT, "cursor": _STR,
                                  "next_cursor": _STR})),
            "post": _op("Suppress a recipient", sub, _ref("SuppressionRef"),
                        body=_ref("SuppressionInput"), body_required=True)},
        f"{a}/sending/suppressions/bulk": {
            "post": _op("Import suppressions", sub, _ref("BulkResult"),
                        body=_obj({"items": _arr(_ref("SuppressionInput"))}, ("items",)),
                        body_required=True)},
        f"{a}/sending/suppressions/{{suppression_id}}": {
            "get": _op("Get a suppression", sub, _ref("Suppression")),
            "patch": _op("Edit a suppression", sub, _ref("Suppression"),
                         body=_obj({"note": _STR, "expires_at": _NSTR})),
            "delete": _op("Delete a suppression", sub, _ref("SuppressionRef"))},
        f"{a}/sending/send": {
            "post": _op("Send an email", sub, _ref("SendResult"), body=_ref("SendInput"),
                        body_required=True, extra_errors={"429": "rate or daily limit"})},
        f"{a}/sending/send_raw": {
            "post": _op("Send a raw MIME message", sub, _ref("SendResult"),
                        body=_ref("SendRawInput"), body_required=True,
                        extra_errors={"429": "rate or daily limit"})},
        f"{a}/activity": {
            "get": _op("Activity log: events", "Observability", _arr(_ref("ActivityEvent")),
                       info=_PAGE_INFO, query=[
                           *_ACTIVITY_QUERY, _q("page", _PAGE),
                           _q("per_page", {"type": "integer", "minimum": 1, "maximum": 1000}),
                           _q("order", {"enum": ["asc", "desc"]})])},
        f"{a}/activity/groups": {
            "get": _op("Activity log: counts grouped by dimensions", "Observability",
                       _arr(_ref("ActivityGroup")),
                       info=_obj({"count": _INT, "limit": _INT, "total_events": _INT,
                                  "dimensions": _arr(_STR)}),
                       query=[*_ACTIVITY_QUERY, _q(
                           "dimensions", _STR, "comma separated: " + ", ".join(DIMENSIONS)),
                           _q("limit", {"type": "integer", "minimum": 1, "maximum": 10000})])},
        f"{a}/webhooks": {
            "get": _op("List webhook endpoints (an extension)", "Webhooks",
                       _arr(_ref("Webhook")), info=_PAGE_INFO),
            "post": _op("Create a webhook endpoint; the answer holds its secret, once",
                        "Webhooks", _ref("Webhook"), body=_ref("WebhookInput"),
                        body_required=True)},
        f"{a}/webhooks/{{webhook_id}}": {
            "get": _op("Get a webhook endpoint", "Webhooks", _ref("Webhook")),
            "delete": _op("Delete a webhook endpoint, its log and undelivered events",
                          "Webhooks", _obj({"id": _STR}, ("id",)))},
        f"{a}/webhooks/{{webhook_id}}/test": {
            "post": _op("Send a test event to a webhook endpoint now", "Webhooks",
                        _ref("WebhookTest"))},
        f"{a}/webhooks/{{webhook_id}}/deliveries": {
            "get": _op("A webhook endpoint's delivery log, newest first", "Webhooks",
                       _arr(_ref("WebhookDelivery")), info=_PAGE_INFO, query=[
                           _q("status", {"enum": ["pending", "delivered", "failed"]}),
                           _q("page", _PAGE),
                           _q("per_page", {"type": "integer", "minimum": 1,
                                           "maximum": 1000})])},
        f"{a}/reports/dmarc/days": {
            "get": _op("DMARC aggregate reports received, per day and domain (an extension)",
                       "Reports", _arr(_ref("DmarcReportDay")), info=_PAGE_INFO,
                       query=_DMARC_QUERY)},
        f"{a}/reports/dmarc/received": {
            "get": _op("DMARC aggregate reports received, one per report file",
                       "Reports", _arr(_ref("DmarcReport")), info=_PAGE_INFO,
                       query=_DMARC_QUERY)},
        f"{a}/reports/dmarc/received/{{report_id}}": {
            "get": _op("One received DMARC aggregate report with its records", "Reports",
                       _ref("DmarcReport"))},
        f"{a}/reports/tls/days": {
            "get": _op("TLS reports (RFC 8460) received, per day, reporter and policy "
                       "(an extension)", "Reports", _arr(_ref("TlsReportDay")),
                       info=_PAGE_INFO, query=_DMARC_QUERY)},
        f"{a}/reports/tls/received": {
            "get": _op("TLS reports received, one per report file", "Reports",
                       _arr(_ref("TlsReport")), info=_PAGE_INFO, query=_DMARC_QUERY)},
        f"{a}/reports/tls/received/{{report_id}}": {
            "get": _op("One received TLS report with the account's policies", "Reports",
                       _ref("TlsReport"))},
        "/accounts/{account_id}/audit_logs": {
            "get": _op("Audit log of configuration changes", "Observability",
                       _arr(_ref("AuditEntry")), info=_PAGE_INFO, query=[
                           _q("since", _TIME), _q("before", _TIME), _q("until", _TIME),
                           _q("actor", _STR), _q("action", _STR), _q("resource_type", _STR),
                           _q("resource_id", _STR), _q("page", _PAGE),
                           _q("per_page", {"type": "integer", "minimum": 1, "maximum": 1000}),
                           _q("direction", {"enum": ["asc", "desc"]})])},
        "/openapi.json": {
            "get": {"summary": "This document", "tags": ["Meta"], "security": [],
                    "responses": {"200": {"description": "the OpenAPI document",
                                          **_json({"type": "object"})}}}},
    }


def _with_path_parameters(paths: dict[str, S]) -> dict[str, S]:
    for path, item in paths.items():
        names = [seg[1:-1] for seg in path.split("/") if seg.startswith("{")]
        if names:
            item["parameters"] = [{"name": n, "in": "path", "required": True,
                                   "schema": {"type": "string", "minLength": 1}}
                                  for n in names]
    return paths


_DOCUMENT: S | None = None


def document() -> S:
    """The OpenAPI document (built once)."""
    global _DOCUMENT
    if _DOCUMENT is None:
        _DOCUMENT = {
            "openapi": "3.1.0",
            "info": {"title": "mta HTTP API", "version": _version,
                     "description": "Admin (Email Routing, Email Sending), sending, activity "
                                    "log and audit log, shaped like the reference API. "
                                    "See docs/api.md."},
            "servers": [{"url": "/client/v4"}],
            "security": [{"bearerAuth": []}],
            "components": {"schemas": SCHEMAS, "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "an API token (`mta tokens create`)"}}},
            "paths": _with_path_parameters(_paths()),
        }
    return _DOCUMENT


async def serve(request: Request) -> JSONResponse:
    return JSONResponse(document())


def routes() -> list[Route]:
    return [Route("/openapi.json", serve, methods=["GET"])]
