"""Delivery-event webhooks: each account's HTTPS endpoints receive its activity events
(sent, delivered, deferred, bounced, complained, suppressed, inbound forwarded and
rejected) as signed JSON POSTs.

- The outbox is the table `webhook_deliveries`, filled by a trigger on `events` in the
  transaction that records each event (migration 0012): nothing here is on a mail path.
- endpoints.py: creating, listing and deleting endpoints, their log and figures (used by
  the admin API and the CLI).
- outbox.py: claiming due events with SKIP LOCKED and a lease, recording each result,
  backoff, pruning; one event of a message at a time per endpoint (ordered per message).
- signature.py and payload.py: what goes on the wire and how a receiver checks it.
- sender.py: the node's sender task (bounded concurrency, its own timeouts).

docs/webhooks.md describes the feature for operators and receivers.
"""
