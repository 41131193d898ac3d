"""The admin REST API under /client/v4, shaped like the reference's so its official
SDK works against our base URL (`spec/sdk-contract.md`).

`install(app)` mounts every admin resource and the envelope error handlers on the
node's Starlette app. Resources, one module each:

- routing_settings.py: zones/{zone_id}/email/routing (+ enable/disable/unlock, dns)
- rules.py: zones/{zone_id}/email/routing/rules (+ catch_all), accounts/{id}/email/routing/rules
- addresses.py: accounts/{account_id}/email/routing/addresses
- sending_subdomains.py: zones/{zone_id}/email/sending/subdomains (+ dns)
- suppressions.py: accounts/{account_id}/email/sending/suppressions (+ bulk)
- webhooks.py: accounts/{account_id}/email/webhooks (+ test, deliveries), an extension
- activity.py: accounts/{account_id}/email/activity (+ groups); audit.py: .../audit_logs
- openapi.py: openapi.json, the document of every route
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from mta.api import (
    activity,
    addresses,
    audit,
    dmarc_reports,
    openapi,
    routing_settings,
    rules,
    sending_subdomains,
    suppressions,
    tls_reports,
    webhooks,
)
from mta.api.envelope import API_PREFIX, install_error_handlers

__all__ = ["install"]


def install(app: Starlette) -> None:
    routes = [*routing_settings.routes(), *rules.routes(), *addresses.routes(),
              *sending_subdomains.routes(), *suppressions.routes(), *webhooks.routes(),
              *activity.routes(), *audit.routes(), *dmarc_reports.routes(),
              *tls_reports.routes(), *openapi.routes()]
    # Plain routes with the prefix rather than one Mount: a Mount would claim every path
    # under /client/v4 and hide routes other modules (sending) add there.
    app.router.routes.extend(Route(API_PREFIX + r.path, r.endpoint, methods=r.methods)
                             for r in routes)
    install_error_handlers(app)
