"""Memory for large JSON bodies: the proxy's peak RSS while N clients send big bodies at once.

    python -m bench.bigbody                       # 10 clients x 30 MB, a model that does not exist
    python -m bench.bigbody --label before        # name the result (bench/results/bigbody-LABEL.json)

Each body is a chat request whose one message has many small content parts (about
30 MB of ``{"type": "text", "text": "x"}`` objects): the shape that costs most when a
JSON body is decoded into Python objects just to read ``model`` and ``stream``.
The model does not exist, so every answer is the proxy's own 404 and nothing is
forwarded: what is measured is reading and routing the body. RSS of the proxy is
sampled every 0.1 s from before the first byte until every answer is in, then once
more after ``--settle`` seconds (is the memory given back?).

To compare with another checkout (the baseline), run the same command there with
another ``--label``; `python -m bench.report` shows every bigbody result.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time

from bench import procstat, stack
from bench.common import command_line, fmt, table, write_json

MODEL = "bench-bigbody"
PART = b'{"type":"text","text":"x"},'


def body(size: int) -> bytes:
    head = b'{"model":"no-such-model","stream":false,"messages":[{"role":"user","content":['
    tail = b'{"type":"text","text":"end"}]}]}'
    count = max(0, (size - len(head) - len(tail)) // len(PART))
    return head + PART * count + tail


def post(host: str, port: int, headers: dict[str, str], data: bytes) -> int:
    """One POST over a plain socket (no client-side copies beyond `data`); returns the status."""
    lines = [
        "POST /v1/chat/completions HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    with socket.create_connection((host, port), timeout=300) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sock.sendall(data)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--mib", type=float, default=30.0, help="body size in MiB")
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--label", default="", help="suffix of the result file")
    stack.add_env_option(p)
    return p.parse_args(argv)


def measure(args: argparse.Namespace) -> dict:
    ports = stack.free_ports(3)  # upstream, manager, proxy
    data = body(int(args.mib * 1024 * 1024))
    with stack.Stack("bigbody", extra_env=stack.parse_env(args.env)) as st:
        setup = stack.one_model(st, ports, MODEL, [], False)
        assert setup.proxy_pid is not None and setup.proxied is not None
        host, port = setup.proxied
        groups = {"proxy": lambda: procstat.tree(setup.proxy_pid)}
        post(host, port, setup.headers, body(1024))  # lazy imports happen before measuring
        time.sleep(1.0)
        sampler = procstat.RssSampler(groups)
        start = sampler.snapshot()["proxy"]
        statuses: list[int] = []
        t0 = time.monotonic()
        with sampler:
            threads = [
                threading.Thread(
                    target=lambda: statuses.append(post(host, port, setup.headers, data))
                )
                for _ in range(args.clients)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        seconds = time.monotonic() - t0
        time.sleep(args.settle)
        after = sampler.snapshot()["proxy"]
    return {
        "benchmark": "bigbody",
        "label": args.label,
        "machine": procstat.machine(),
        "settings": vars(args) | {"unit": "KiB (VmRSS of the proxy)", "body_bytes": len(data)},
        "start_kib": start,
        "peak_kib": sampler.peak["proxy"],
        "after_kib": after,
        "seconds": seconds,
        "statuses": sorted(statuses),
    }


def render(result: dict) -> str:
    s = result["settings"]
    return table(
        [
            "label",
            "clients x body",
            "proxy before MiB",
            "proxy peak MiB",
            f"{s['settle']:.0f}s later MiB",
            "answers",
        ],
        [
            [
                result["label"] or "-",
                f"{s['clients']} x {s['body_bytes'] / 1048576:.0f} MiB",
                fmt(result["start_kib"] / 1024, 1),
                fmt(result["peak_kib"] / 1024, 1),
                fmt(result["after_kib"] / 1024, 1),
                ", ".join(sorted({str(x) for x in result["statuses"]})),
            ]
        ],
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    result["command"] = command_line("bench.bigbody", argv)
    name = "bigbody" + (f"-{args.label}" if args.label else "")
    path = write_json(name, result)
    print(render(result))
    print(f"raw numbers: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
