"""Sum a py-spy profile (collapsed stacks, `py-spy record --format raw`) by area.

    .venv/bin/python bench/profile_summary.py PROFILE [--top 25]

Views of the samples (py-spy records threads it sees running; pool threads waiting for
work and the event loop's own C code are set apart, see `summarize`):
- by library: where the CPU is actually spent, from the innermost frame (SQLAlchemy,
  asyncpg, the `email` package, dkimpy, the event loop, ...; our own code as mta/<pkg>);
- by product component: the innermost frame in our own code (mta/<package>/<module>),
  i.e. which part of the product asked for the work, libraries included;
- the top functions by self time.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")

LIBRARIES = [  # (substring of the file path, label); first match wins
    ("sqlalchemy/", "SQLAlchemy"), ("asyncpg/", "asyncpg"), ("aiosmtplib/", "aiosmtplib"),
    ("aiosmtpd/", "aiosmtpd"), ("/dkim/", "dkimpy"), ("cryptography/", "cryptography"),
    ("/dns/", "dnspython"), ("uvicorn/", "uvicorn"), ("starlette/", "starlette"),
    ("fastapi/", "fastapi"), ("pydantic", "pydantic"), ("uvloop/", "uvloop"),
    ("/email/", "stdlib email"), ("/logging/", "stdlib logging"), ("/json/", "stdlib json"),
    ("/asyncio/", "stdlib asyncio"), ("/ssl.py", "stdlib ssl"), ("prometheus_client", "prometheus"),
    ("/uuid.py", "stdlib uuid"), ("/re/", "stdlib re"), ("/ipaddress.py", "stdlib ipaddress"),
    ("/concurrent/", "stdlib concurrent.futures (to_thread)"), ("/base64.py", "stdlib base64"),
    ("/hashlib.py", "stdlib hashlib"), ("/functools.py", "stdlib functools"),
    ("/enum.py", "stdlib enum"), ("/threading.py", "stdlib threading"),
    ("/datetime.py", "stdlib datetime"), ("/typing.py", "stdlib typing"),
    ("/dataclasses.py", "stdlib dataclasses"), ("/copy.py", "stdlib copy"),
    ("/greenlet/", "greenlet"),
]


def parse(path: str) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = []
            for raw in stack.split(";"):
                m = FRAME.match(raw)
                if m:
                    frames.append((m["func"], m["file"]))
                else:
                    frames.append((raw, ""))
            stacks.append((frames, int(count)))
    return stacks


def our_module(file: str) -> str | None:
    m = re.search(r"(?:^|/)mta/((?:[a-z_]+/)?[a-z_]+)\.py$", file)
    return f"mta/{m[1]}" if m else None


def library(func: str, file: str) -> str:
    # py-spy shows no frame for native code: a sample in C code (OpenSSL, a C
    # extension) ends at the Python frame that called it.
    if func.startswith("process ") and not file:
        return "no Python frame (native, between callbacks)"
    mod = our_module(file)
    if mod:
        return mod.rsplit("/", 1)[0] if mod.count("/") > 1 else mod
    path = "/" + file  # py-spy gives paths relative to sys.path: "asyncio/streams.py"
    for needle, label in LIBRARIES:
        if needle in path:
            return label
    if "site-packages" in file:
        return file.split("site-packages/")[1].split("/")[0]
    return "other (stdlib, interpreter)" if file else "native/unknown"


def summarize(path: str, top: int) -> str:
    stacks = parse(path)
    raw_total = sum(c for _, c in stacks) or 1
    # A sample whose innermost frame is the thread pool's `_worker` is a pool thread
    # waiting for work (native work in a pool thread ends at the Python frame that
    # called it, e.g. SigningKey.sign): py-spy counts it as active, we do not. One ending
    # at the event loop's entry (Runner.run) is uvloop's own C code: I/O and callbacks
    # with no Python frame (asyncpg's Cython protocol) or waiting in epoll; Python frames
    # cannot tell which, so it is reported apart and the shares are of the rest.
    idle = loop = 0
    kept = []
    for frames, count in stacks:
        leaf = frames[-1] if frames else ("?", "")
        if leaf[0] == "_worker" and "concurrent/futures/thread.py" in leaf[1]:
            idle += count
        elif leaf[0] in ("Runner.run", "run_until_complete", "run_forever"):
            loop += count
        else:
            kept.append((frames, count))
    stacks = kept
    total = sum(c for _, c in stacks) or 1
    by_lib: Counter[str] = Counter()
    by_component: Counter[str] = Counter()
    by_func: Counter[str] = Counter()
    by_proc: Counter[str] = Counter()
    for frames, count in stacks:
        leaf = frames[-1] if frames else ("?", "")
        by_lib[library(leaf[0], leaf[1])] += count
        # --subprocesses: the stack starts with the process chain (supervisor, worker)
        proc = next((f for f, _ in reversed(frames) if f.startswith("process ")), "")
        role = re.search(r"--worker-index (\d+)", proc)
        by_proc[f"worker {role[1]}" if role else ("supervisor / single process"
                                                 if proc else "?")] += count
        comp = next((our_module(f) for _, f in reversed(frames) if our_module(f)), None)
        by_component[comp or "outside mta code (event loop, library callbacks)"] += count
        by_func[f"{leaf[0]} ({leaf[1].split('site-packages/')[-1]})"] += count

    def block(title: str, counter: Counter, n: int) -> list[str]:
        lines = [title]
        for name, c in counter.most_common(n):
            lines.append(f"  {100 * c / total:5.1f} %  {name}")
        return lines

    out = [f"{raw_total} samples from {path}: {100 * idle / raw_total:.0f} % idle pool "
           f"threads (left out), {100 * loop / raw_total:.0f} % in the event loop's C code "
           f"or waiting in epoll (left out), shares below of the other {total}.", ""]
    out += block("CPU by process:", by_proc, top) + [""]
    out += block("CPU by library (innermost frame):", by_lib, top) + [""]
    out += block("CPU by product component (innermost mta frame, libraries included):",
                 by_component, top) + [""]
    out += block("Top functions by self time:", by_func, top)
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("profile")
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args()
    print(summarize(args.profile, args.top))


if __name__ == "__main__":
    main()
