"""CPU per message of the pure (no database) steps of the forward path, in one process.

    .venv/bin/python bench/cpu_micro.py [--iterations 200] [--repeat 5] [--only checks,headers,forward]

The steps a forwarded message goes through outside the database, each run in a loop
on the benchmark message of bench/common.World (3.2 KB, DKIM-signed by good.test),
against the tests' loopback DNS server with a warm cache (a query reaching the server
during the loop is reported): SPF, DKIM, ARC and DMARC checks (`run_checks`), the
header work of the MX (`from_header`, Received, Authentication-Results), and the
forwarded copy (`seal_and_sign`: one DKIM signature and an ARC set, RSA-2048).

CPU ms per message = process CPU time (every thread) / iterations, the smallest of
`--repeat` loops. The machine is
shared, so compare runs made close together; `valgrind --tool=callgrind` on a small
`--iterations` gives instruction counts that do not depend on the load.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from bench.common import World  # noqa: E402
from mta.checks.results import strip_our_auth_results  # noqa: E402
from mta.dnscache import DnsResolver  # noqa: E402
from mta.routing.forward import seal_and_sign  # noqa: E402
from mta.signing.keys import SigningKey  # noqa: E402
from mta.smtp.authcheck import from_header, run_checks, start_spf  # noqa: E402
from mta.smtp.headers import auth_results_field, header_value, prepend, received_field  # noqa: E402

STEPS = ("checks", "headers", "forward")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp))
        try:
            await run(world, args)
        finally:
            world.stop()


async def run(world: World, args: argparse.Namespace) -> None:
    raw = world.message.read_bytes()
    resolver = DnsResolver([world.nameserver], cache_size=1000, min_ttl=3600)
    key = SigningKey("fwd.test", "sel", rsa.generate_private_key(65537, 2048))

    async def checks():
        spf = start_spf(resolver, "127.0.0.1", "alice@good.test", "client.test", "mx.test")
        return await run_checks(resolver, raw, spf, from_header(raw))

    auth = await checks()  # warm the cache
    assert auth.dmarc_result == "pass", auth.to_header("mx.test")

    async def headers():
        body = strip_our_auth_results(raw, "mx.test")
        header_value(raw, "Subject")
        header_value(raw, "Message-ID")
        return prepend(body, received_field(helo="client.test", ptr="client.test",
                                            ip="127.0.0.1", hostname="mx.test",
                                            queue_id="0" * 32, tls=None, recipient="u@ours.test"),
                       auth_results_field(auth.to_header("mx.test", fold=True)))

    async def forward():
        return seal_and_sign(raw, auth=auth, authserv_id="mx.test", forwarding_key=key)

    steps = {"checks": checks, "headers": headers, "forward": forward}
    only = args.only.split(",") if args.only else STEPS
    queries = len(world.dns.queries)
    total = 0.0
    print(f"{'step':<10} {'CPU ms/msg':>10}")
    for name in only:
        step = steps[name]
        for _ in range(5):
            await step()
        runs = []
        for _ in range(args.repeat):
            started = time.process_time()
            for _ in range(args.iterations):
                await step()
            runs.append((time.process_time() - started) * 1000 / args.iterations)
        ms = min(runs)  # the least disturbed run
        total += ms
        print(f"{name:<10} {ms:>10.3f}")
    print(f"{'total':<10} {total:>10.3f}")
    leaked = len(world.dns.queries) - queries
    if leaked:
        print(f"warning: {leaked} DNS queries reached the server during the loops")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--repeat", type=int, default=5, help="timed loops per step (the "
                   "smallest is reported)")
    p.add_argument("--only", default="")
    asyncio.run(main(p.parse_args()))
