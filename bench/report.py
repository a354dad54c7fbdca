"""Regenerate docs/benchmarks.md from bench/results/*.json. Never edit that file by hand.

    python -m bench.report

Reads whichever of latency, streaming, swap, storm, jobs, memory exist; a missing one is
reported as not run.
The findings section is computed from the same numbers, with the thresholds
written next to each statement.
"""

from __future__ import annotations

import sys

from bench.common import DOC, RESULTS, fmt, read_json, table

TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 0.5
"""Issue 16: added p99 at one client."""
TARGET_GATEWAY_CPU_MS = 0.25
"""Issue 16: proxy + manager CPU per request at one client."""


def _machine_section(results: dict[str, dict]) -> str:
    rows = []
    for name, r in results.items():
        m = r.get("machine", {})
        rows.append(
            [
                name,
                m.get("taken_at", "?"),
                m.get("git_commit", "?"),
                " ".join(str(x) for x in m.get("loadavg_at_start", [])),
            ]
        )
    first = next(iter(results.values()))["machine"]
    desc = table(
        ["", ""],
        [
            ["CPU", f"{first.get('cpu_model')} x {first.get('nproc')} (nproc)"],
            ["memory", f"{first.get('memory_gib')} GiB"],
            ["OS / kernel", f"{first.get('os')} / {first.get('kernel')}"],
            ["Python", first.get("python")],
            ["load client", first.get("wrk") or "wrk not found"],
            ["Docker engine", first.get("docker_server") or "not reachable"],
        ],
    )
    runs = table(["result", "taken at (UTC)", "git commit", "load average at start"], rows)
    return f"{desc}\n\n{runs}"


def _gateway_cpu(row: dict) -> float | None:
    p = row.get("proxied") or {}
    proxy_ms, mgr_ms = p.get("proxy_cpu_ms_per_req"), p.get("manager_cpu_ms_per_req")
    return None if proxy_ms is None or mgr_ms is None else proxy_ms + mgr_ms


def _latency_before_after(before: dict, after: dict) -> tuple[str, list[str]]:
    """The latency figures of an earlier revision (latency-before.json) beside these."""
    findings: list[str] = []
    old = {r["concurrency"]: r for r in before["summary"] if "added_ms" in r}
    new = {r["concurrency"]: r for r in after["summary"] if "added_ms" in r}
    out = [
        "\n### Before and after\n",
        f"*before*: `{before.get('command', '')}` at commit "
        f"{before['machine'].get('git_commit', '?')}; *after*: the figures above. "
        "Each cell is before → after; other load is the median share of the CPU other "
        "processes used during the proxied runs.",
    ]
    rows = []
    for c in sorted(set(old) & set(new)):
        o, n = old[c], new[c]

        def pair(value_old: float | None, value_new: float | None, digits: int = 3) -> str:
            return f"{fmt(value_old, digits)} → {fmt(value_new, digits)}"

        rows.append(
            [
                c,
                pair(o["added_ms"]["p50"], n["added_ms"]["p50"]),
                pair(o["added_ms"]["p99"], n["added_ms"]["p99"]),
                pair(
                    o["proxied"].get("proxy_cpu_ms_per_req"),
                    n["proxied"].get("proxy_cpu_ms_per_req"),
                ),
                pair(
                    o["proxied"].get("manager_cpu_ms_per_req"),
                    n["proxied"].get("manager_cpu_ms_per_req"),
                ),
                pair(_gateway_cpu(o), _gateway_cpu(n)),
                f"{o['proxied']['rps']:.0f} → {n['proxied']['rps']:.0f}",
                f"{o['proxied']['other_cpu_share'] * 100:.0f}% → "
                f"{n['proxied']['other_cpu_share'] * 100:.0f}%",
            ]
        )
    out.append(
        "\n"
        + table(
            [
                "clients",
                "added p50 ms",
                "added p99 ms",
                "proxy CPU ms/req",
                "manager CPU ms/req",
                "proxy + manager CPU ms/req",
                "proxied req/s",
                "other load",
            ],
            rows,
        )
    )
    if 1 in old and 1 in new:
        n = new[1]
        p99, cpu = n["added_ms"]["p99"], _gateway_cpu(n)
        met = p99 < TARGET_ADDED_P99_MS and cpu is not None and cpu < TARGET_GATEWAY_CPU_MS
        findings.append(
            f"Leases without round trips (issue 16), 1 client: added p99 "
            f"{fmt(old[1]['added_ms']['p99'], 3)} → {fmt(p99, 3)} ms (target under "
            f"{TARGET_ADDED_P99_MS:g}), proxy + manager CPU {fmt(_gateway_cpu(old[1]), 3)} → "
            f"{fmt(cpu, 3)} ms per request (target under {TARGET_GATEWAY_CPU_MS:g}): "
            f"**{'met' if met else 'NOT met'}**."
        )
    return "\n".join(out), findings


def _latency_section(
    lat: dict,
    title: str = "Added latency (non-streaming chat completion)",
    before: dict | None = None,
) -> tuple[str, list[str]]:
    findings: list[str] = []
    s = lat["settings"]
    out = [f"## {title}\n"]
    out.append(
        f"`{lat.get('command', 'python -m bench.latency')}`: wrk (1 thread, keep-alive), "
        f"{s['duration_s']:g} s per run, {s['repeats']} repeats, median kept; both paths hit the same "
        "upstream process, back to back. CPU ms/req: CPU time of that process divided by requests served. "
        "Other load: CPU used by processes outside the benchmark during the proxied run, as a share of all cores."
    )
    if s.get("env"):
        out.append(f"\nSettings given: `{' '.join(f'{k}={v}' for k, v in s['env'].items())}`.")
    rows = []
    for row in lat["summary"]:
        d, p = row.get("direct"), row.get("proxied")
        if not d or not p:
            continue
        a, lr = row["added_ms"], row["latency_ratio"]
        rows.append(
            [
                row["concurrency"],
                f"{fmt(d['p50_ms'], 3)} / {fmt(d['p95_ms'], 3)} / {fmt(d['p99_ms'], 3)}",
                f"{fmt(p['p50_ms'], 3)} / {fmt(p['p95_ms'], 3)} / {fmt(p['p99_ms'], 3)}",
                f"{fmt(a['p50'], 3)} / {fmt(a['p95'], 3)} / {fmt(a['p99'], 3)}",
                fmt(lr["p50"], 1),
                f"{d['rps']:.0f}",
                f"{p['rps']:.0f}",
                fmt(row["rps_ratio"], 3),
                fmt(p.get("proxy_cpu_ms_per_req"), 3),
                fmt(p.get("manager_cpu_ms_per_req"), 3),
                p["errors"] + d["errors"],
                f"{p['other_cpu_share'] * 100:.0f}%",
            ]
        )
    out.append(
        "\n"
        + table(
            [
                "clients",
                "direct p50 / p95 / p99 ms",
                "proxied p50 / p95 / p99 ms",
                "added p50 / p95 / p99 ms",
                "p50 ratio",
                "direct req/s",
                "proxied req/s",
                "req/s ratio",
                "proxy CPU ms/req",
                "manager CPU ms/req",
                "errors",
                "other load",
            ],
            rows,
        )
    )
    if before is not None:
        text, found = _latency_before_after(before, lat)
        out.append(text)
        findings += found
    lr = lat.get("lease_roundtrip")
    if lr:
        out.append(
            f"\nThe manager alone, one client, {lr['samples']} lease grants and releases on one keep-alive "
            f"connection: grant p50 {fmt(lr['grant_ms']['p50'], 3)} ms (p99 {fmt(lr['grant_ms']['p99'], 3)}), "
            f"release p50 {fmt(lr['release_ms']['p50'], 3)} ms (p99 {fmt(lr['release_ms']['p99'], 3)}), "
            f"manager CPU {fmt(lr.get('manager_cpu_ms_per_roundtrip'), 3)} ms per grant+release."
        )
    by_c = {r["concurrency"]: r for r in lat["summary"] if "added_ms" in r}
    if 1 in by_c:
        added = by_c[1]["added_ms"]["p50"]
        verdict = "met" if added < TARGET_ADDED_P50_MS else "NOT met"
        findings.append(
            f"Added latency at 1 client, p50: {fmt(added, 3)} ms against a target of "
            f"{TARGET_ADDED_P50_MS:g} ms: **{verdict}**."
        )
    for c in sorted(by_c):
        if c == 1:
            continue
        r = by_c[c]
        findings.append(
            f"At {c} clients the proxied path adds {fmt(r['added_ms']['p50'], 2)} ms at p50 and "
            f"{fmt(r['added_ms']['p99'], 2)} ms at p99, and serves {fmt(r['rps_ratio'], 3)} of the direct "
            "path's requests per second."
        )
    top = by_c.get(max(by_c)) if by_c else None
    if top:
        p = top["proxied"]
        proxy_ms, mgr_ms = p.get("proxy_cpu_ms_per_req"), p.get("manager_cpu_ms_per_req")
        if proxy_ms is not None and mgr_ms is not None:
            total = (
                proxy_ms
                + mgr_ms
                + p.get("upstream_cpu_ms_per_req", 0)
                + p.get("client_cpu_ms_per_req", 0)
            )
            cores = lat["machine"].get("nproc") or 1
            free = cores * max(0.0, 1.0 - p.get("other_cpu_share", 0.0))
            findings.append(
                f"CPU per proxied request at {top['concurrency']} clients: proxy {fmt(proxy_ms, 3)} ms, "
                f"manager {fmt(mgr_ms, 3)} ms ({fmt(100 * mgr_ms / (proxy_ms + mgr_ms), 0)}% of the gateway's "
                f"CPU goes to lease grants and releases); {fmt(total, 3)} ms with the upstream and the client. "
                f"On {cores} idle cores that caps the proxied path near {fmt(cores * 1000 / total, 0)} req/s; with "
                f"the {fmt(free, 2)} cores other processes left free during the run, near "
                f"{fmt(free * 1000 / total, 0)} req/s; measured {p['rps']:.0f}. Past one client the added latency "
                "is queueing behind that CPU (clients / req/s), so it scales with the CPU per request."
            )
            if mgr_ms > 0.3 * proxy_ms:
                findings.append(
                    "Hot path: every request costs two HTTP round trips to the manager (POST /v1/leases, "
                    "DELETE /v1/leases/{id}) per shared lease; the manager spends more than 30% of the "
                    "proxy's own CPU on them."
                )
    return "\n".join(out), findings


def _streaming_section(st: dict) -> tuple[str, list[str]]:
    s = st["settings"]
    out = ["## Streaming\n"]
    out.append(
        f"`{st.get('command', 'python -m bench.streaming')}`: {s['chunks']} chunks per stream, the upstream "
        f"writes one every {s['gap_ms']:g} ms and stamps it with its monotonic clock; {s['streams']} streams per "
        f"path, concurrency and repeat, {s['repeats']} repeats (median). Delivery delay: upstream write to "
        "client read of one chunk. A chunk is *held back* when it reached the client only after the upstream "
        "had already produced the next one: a buffering proxy does that to nearly every chunk, while on a "
        "loaded machine a few chunks of either path miss it when the client is not scheduled in time, so "
        "compare the proxied count with the direct one."
    )
    rows = []
    findings = []
    for row in st["summary"]:
        for path in ("direct", "proxied"):
            f = row.get(path)
            if not f:
                continue
            rows.append(
                [
                    row["concurrency"],
                    path,
                    f"{fmt(f['first_chunk_p50_ms'], 3)} / {fmt(f['first_chunk_p99_ms'], 3)}",
                    f"{fmt(f['gap_p50_ms'], 2)} / {fmt(f['gap_p99_ms'], 2)} / {fmt(f['gap_max_ms'], 2)}",
                    f"{fmt(f['delay_p50_ms'], 3)} / {fmt(f['delay_p99_ms'], 3)} / {fmt(f['delay_max_ms'], 3)}",
                    f"{f['held_back']} of {f['chunks']}",
                    f"{f['incomplete']} of {f['streams']}",
                ]
            )
        if "added_ms" in row:
            p = row["proxied"]
            d = row["direct"]
            held_p = p["held_back"] / p["chunks"] if p["chunks"] else 0.0
            held_d = d["held_back"] / d["chunks"] if d["chunks"] else 0.0
            if held_p > 0.5:
                verdict = "**the proxy buffers**"
            elif held_p <= max(2 * held_d, 0.02):
                verdict = "no sign of buffering: no more often than on the direct path"
            else:
                verdict = "more often than on the direct path: some chunks wait in the proxy; rerun on a quiet machine"
            findings.append(
                f"Streaming at {row['concurrency']} concurrent: the proxy adds "
                f"{fmt(row['added_ms']['first_chunk_p50_ms'], 3)} ms to the first chunk (p50) and "
                f"{fmt(row['added_ms']['delay_p50_ms'], 3)} ms to each chunk's delivery (p50); chunks held back "
                f"{p['held_back']} of {p['chunks']} proxied, {d['held_back']} of {d['chunks']} direct ({verdict})."
            )
    out.append(
        "\n"
        + table(
            [
                "streams at once",
                "path",
                "first chunk p50 / p99 ms",
                "gap p50 / p99 / max ms",
                "delivery delay p50 / p99 / max ms",
                "held back",
                "incomplete",
            ],
            rows,
        )
    )
    return "\n".join(out), findings


def _swap_section(
    sw: dict, before: dict | None = None, fit: dict | None = None
) -> tuple[str, list[str]]:
    s = sw["summary"]
    out = ["## Swap overhead (real Docker engine)\n"]
    out.append(
        f"`{sw.get('command', 'python -m bench.swap')}`: two text models of `{sw['settings']['image']}`, each "
        f"loading for {sw['settings']['load_seconds']:g} s; with A resident the client asks B through the proxy. "
        "Overhead = total minus B's own start-to-ready (container start to its server listening, from Docker's "
        "StartedAt and the log timestamp of its 'Uvicorn running' line). Phases come from the manager's "
        "/v1/events state events and Docker's timestamps, all on this machine's clock."
    )
    names = {
        "total_ms": "request sent to answer (total)",
        "own_load_ms": "B's own start-to-ready (subtracted)",
        "overhead_ms": "**swap overhead**",
        "stopping_old_ms": "stopping A (request to A stopped)",
        "starting_new_ms": "starting B (A stopped to B's container running)",
        "readiness_detection_ms": "readiness detection (B listening to manager's ready)",
        "lease_and_forward_ms": "lease grant, forward and answer",
    }
    if before is None:
        rows = [
            [label, fmt(s.get(f"{k}_median"), 1), fmt(s.get(f"{k}_max"), 1)]
            for k, label in names.items()
        ]
        out.append("\n" + table(["phase", "median ms", "max ms"], rows))
        out.append(f"\n{s['swaps']} swaps, {s['failed']} failed.")
    else:
        b = before["summary"]
        out.append(
            f"\n*before*: `{before.get('command', '')}` at the revision before the swap work "
            f"(load average {_load(before)} at its start); *after*: this revision (load average "
            f"{_load(sw)}). Both against the same image, run one after the other on a shared machine."
        )
        rows = [
            [
                label,
                fmt(b.get(f"{k}_median"), 1),
                fmt(s.get(f"{k}_median"), 1),
                fmt(b.get(f"{k}_max"), 1),
                fmt(s.get(f"{k}_max"), 1),
            ]
            for k, label in names.items()
        ]
        out.append(
            "\n"
            + table(
                ["phase", "before median ms", "after median ms", "before max ms", "after max ms"],
                rows,
            )
        )
        out.append(
            f"\nbefore: {b['swaps']} swaps, {b['failed']} failed; after: {s['swaps']} swaps, "
            f"{s['failed']} failed."
        )
    if fit is not None:
        f = fit["summary"]
        out.append(
            f"\n**Within a GPU budget** (`{fit.get('command', 'python -m bench.swap --fit')}`, load "
            f"average {_load(fit)}): both models declare 10 MiB of a 20 MiB budget, so B loads beside "
            "A and nothing is stopped; what a start costs beyond B's own load:\n"
        )
        fit_rows = [
            [label, fmt(f.get(f"{k}_median"), 1), fmt(f.get(f"{k}_max"), 1)]
            for k, label in names.items()
            if k != "stopping_old_ms"
        ]
        out.append(table(["phase", "median ms", "max ms"], fit_rows))
        out.append(f"\n{f['swaps']} starts, {f['failed']} failed.")
    findings = []
    over, det = s.get("overhead_ms_median"), s.get("readiness_detection_ms_median")
    if over and det is not None:
        findings.append(
            f"Swap overhead is {fmt(over, 0)} ms (median) on top of the model's own load; readiness detection "
            f"is {fmt(det, 0)} ms of it ({fmt(100 * det / over, 0)}%), stopping the old model "
            f"{fmt(s.get('stopping_old_ms_median'), 0)} ms, starting the new container "
            f"{fmt(s.get('starting_new_ms_median'), 0)} ms."
        )
        verdict = "met" if over < 150 else "**NOT met**"
        findings.append(
            f"Swap overhead (issue 16): {fmt(over, 0)} ms median against a target of 150 ms: {verdict}"
            + (
                f"; within a GPU budget (B loads beside A) a start costs "
                f"{fmt(fit['summary'].get('overhead_ms_median'), 0)} ms."
                if fit is not None
                else "."
            )
        )
        if before is not None and before["summary"].get("overhead_ms_median"):
            b = before["summary"]
            findings.append(
                f"Swap work: overhead {fmt(b['overhead_ms_median'], 0)} -> {fmt(over, 0)} ms (median); "
                f"readiness detection {fmt(b.get('readiness_detection_ms_median'), 0)} -> {fmt(det, 0)} ms."
            )
        if det > 0.3 * over:
            findings.append(
                "Hot spot in swaps: readiness detection is a large share of the overhead; the probe "
                "looks every 20 ms, so the rest is the manager's own latency (CPU contention, the "
                "runtime's inspect after ready)."
            )
    return "\n".join(out), findings


def _load(result: dict) -> str:
    loads = (result.get("machine") or {}).get("loadavg_at_start")
    return ", ".join(fmt(x, 2) for x in loads) if loads else "unknown"


def _storm_section(sm: dict) -> tuple[str, list[str]]:
    s, cfg = sm["summary"], sm["settings"]
    out = ["## Storm: two models, interleaved\n"]
    out.append(
        f"`{sm.get('command', 'python -m bench.storm')}`: {cfg['requests']} requests, {cfg['concurrency']} at a "
        f"time, {cfg['pattern']}, {cfg['runtime']} runtime, each model server starting in "
        f"{cfg['load_seconds']:g} s. Manager settings: "
        f"{' '.join(f'{k}={v}' for k, v in cfg.get('manager_env', {}).items()) or 'defaults'}."
    )
    rows = [
        ["requests", s["requests"]],
        ["answered 200", s["ok"]],
        ["errors", s["errors"]],
        [
            "errors by status, code (source)",
            ", ".join(f"{k}: {v}" for k, v in s["errors_by_code"].items()) or "none",
        ],
        ["answers from the wrong model", s["misrouted"]],
        ["swaps performed (manager swap events)", s["swaps"]],
        ["longest wait ms", fmt(s["longest_wait_ms"], 1)],
        ["wait p50 / p99 ms", f"{fmt(s['p50_wait_ms'], 1)} / {fmt(s['p99_wait_ms'], 1)}"],
        ["wall time s", fmt(s["wall_s"], 2)],
    ]
    for model, f in s["per_model"].items():
        rows.append(
            [
                f"{model} answered, p50 / p99 / max ms",
                f"{f['ok']}, {fmt(f['p50_ms'], 1)} / {fmt(f['p99_ms'], 1)} / {fmt(f['max_ms'], 1)}",
            ]
        )
    out.append("\n" + table(["", "value"], rows))
    findings = [
        f"Storm: {s['errors']} errors and {s['misrouted']} misrouted answers in {s['requests']} requests; "
        f"{s['swaps']} swaps; longest wait {fmt(s['longest_wait_ms'] / 1000, 2)} s."
    ]
    return "\n".join(out), findings


def _jobs_section(jb: dict) -> tuple[str, list[str]]:
    s, cfg = jb["summary"], jb["settings"]
    out = [
        '<a id="jobs-vs-interactive"></a>\n\n## Jobs vs interactive: the same requests, side by side\n'
    ]
    out.append(
        f"`{jb.get('command', 'python -m bench.jobs')}`: {cfg['requests']} chat requests, {cfg['pattern']}, "
        f"process runtime, each model server starting in {cfg['load_seconds']:g} s, model A resident at "
        "the start of each phase. *Interactive*: all sent at once to `/v1/chat/completions`. *Jobs*: the "
        "same bodies as one batch (`/v1/files` + `/v1/batches`), timed from the upload until the batch "
        "reads `completed`. Swaps: the manager's swap events during each phase. Manager settings: "
        f"{' '.join(f'{k}={v}' for k, v in cfg.get('manager_env', {}).items()) or 'defaults'}."
    )
    rows = []
    for name, key in (("interactive, all at once", "interactive"), ("jobs, one batch", "jobs")):
        p = s[key]
        rows.append([name, p["ok"], p["errors"], p["swaps"], fmt(p["wall_s"], 2)])
    rows.append(["jobs / interactive", "", "", fmt(s["swap_ratio"], 3), fmt(s["time_ratio"], 3)])
    out.append("\n" + table(["", "answered", "errors", "swaps", "total s"], rows))
    i, j = s["interactive"], s["jobs"]
    findings = [
        f"Jobs: {cfg['requests']} requests over two models as one batch cost {j['swaps']} swap(s) and "
        f"{fmt(j['wall_s'], 2)} s; sent interactively at once, {i['swaps']} swaps and {fmt(i['wall_s'], 2)} s "
        f"(time ratio jobs/interactive {fmt(s['time_ratio'], 2)}; each stand-in swap costs about "
        f"{cfg['load_seconds']:g} s, a real one tens of seconds)."
    ]
    return "\n".join(out), findings


def _memory_section(mem: dict) -> tuple[str, list[str]]:
    out = ["## Memory (resident set size)\n"]
    out.append(
        f"`{mem.get('command', 'python -m bench.memory')}`: VmRSS sampled every 0.1 s; the proxy with its "
        "worker processes, the manager without the model server it launched."
    )
    rows = []
    for p in mem["phases"]:
        rows.append(
            [
                p["phase"],
                fmt(p["start_kib"]["proxy"] / 1024, 1),
                fmt(p["peak_kib"]["proxy"] / 1024, 1),
                fmt(p["start_kib"]["manager"] / 1024, 1),
                fmt(p["peak_kib"]["manager"] / 1024, 1),
            ]
        )
    out.append(
        "\n"
        + table(
            [
                "phase",
                "proxy at start MiB",
                "proxy peak MiB",
                "manager at start MiB",
                "manager peak MiB",
            ],
            rows,
        )
    )
    phases = mem["phases"]
    findings = []
    if len(phases) >= 2:
        first, last = phases[0]["start_kib"], phases[-1]["end_kib"]
        findings.append(
            f"Memory: proxy {fmt(first['proxy'] / 1024, 1)} MiB idle, {fmt(max(p['peak_kib']['proxy'] for p in phases) / 1024, 1)} "
            f"MiB peak, {fmt(last['proxy'] / 1024, 1)} MiB after the load; manager {fmt(first['manager'] / 1024, 1)} / "
            f"{fmt(max(p['peak_kib']['manager'] for p in phases) / 1024, 1)} / {fmt(last['manager'] / 1024, 1)} MiB."
        )
    return "\n".join(out), findings


def _faults_section(after: dict, before: dict | None = None) -> tuple[str, list[str]]:
    out = ["## Faults: requests lost when a part dies\n"]
    out.append(
        f"`{after.get('command', 'python -m bench.faults')}`: the real manager (process runtime) and "
        "proxy, stand-in model servers that load in 0.5 s and stream a word per 0.1 s, the `openai` "
        "SDK without retries; parts are SIGKILLed (tests/integration/faults/). *lost* counts every "
        "request that did not get its full, correct answer, clean errors included. *noticed* is "
        "kill to the manager reporting the model no longer ready; *recovered* kill to the first "
        "answer to a request sent after it; *manager back* kill to the restarted manager answering "
        "(its start-up time on this machine included)."
    )
    if before is not None:
        out.append(f"\nBefore the fixes: `{before.get('command', '')}`.")
    rows = []
    for kind, r in after["faults"].items():
        old = (before or {}).get("faults", {}).get(kind)
        times = []
        for key, label in (
            ("noticed_s", "noticed"),
            ("recovered_s", "recovered"),
            ("manager_back_s", "manager back"),
        ):
            if key in r:
                times.append(f"{label} {fmt(r[key], 2) if r[key] is not None else 'never'} s")
        extra = []
        for key in ("orphans", "max_resident", "stopped_with_requests_in_flight", "http_429"):
            if key in r:
                extra.append(f"{key} {r[key]}")
        rows.append(
            [
                kind,
                f"{old['lost']} of {old['requests']}" if old else "not run",
                f"{r['lost']} of {r['requests']}",
                ", ".join(f"{k}: {v}" for k, v in r["counts"].items()),
                "; ".join(times + extra),
            ]
        )
    out.append(
        "\n" + table(["fault", "lost before", "lost now", "answers now", "times and facts"], rows)
    )
    findings = [
        f"Faults: {kind} lost {r['lost']} of {r['requests']} requests"
        + (
            f" (streams under way: {r['streams_under_way_lost']})"
            if "streams_under_way_lost" in r
            else ""
        )
        + "."
        for kind, r in after["faults"].items()
    ]
    return "\n".join(out), findings


def _bigbody_section(runs: list[dict]) -> tuple[str, list[str]]:
    out = ["## Large JSON bodies (memory)\n"]
    out.append(
        "`python -m bench.bigbody --label LABEL`: clients send a chat body of many small content "
        "parts at once for a model that does not exist (every answer is the proxy's 404), VmRSS of "
        "the proxy sampled every 0.1 s. *before*: the proxy decoded the whole body to read `model` "
        "and `stream`; *after*: it reads only those fields (msgspec skips the rest), so a body "
        "costs about its own size."
    )
    rows = []
    for r in runs:
        s = r["settings"]
        rows.append(
            [
                r.get("label") or "-",
                f"{s['clients']} x {s['body_bytes'] / 1048576:.0f} MiB",
                fmt(r["start_kib"] / 1024, 1),
                fmt(r["peak_kib"] / 1024, 1),
                fmt(r["after_kib"] / 1024, 1),
                ", ".join(sorted({str(x) for x in r["statuses"]})),
            ]
        )
    out.append(
        "\n"
        + table(
            [
                "run",
                "clients x body",
                "proxy before MiB",
                "proxy peak MiB",
                "settled MiB",
                "answers",
            ],
            rows,
        )
    )
    findings = [
        f"Large bodies ({r.get('label') or '-'}): proxy peak {fmt(r['peak_kib'] / 1024, 0)} MiB for "
        f"{r['settings']['clients']} concurrent {r['settings']['body_bytes'] / 1048576:.0f} MiB bodies."
        for r in runs
    ]
    return "\n".join(out), findings


def _streams_section(results: dict[str, dict]) -> tuple[str, list[str]]:
    from bench import streams

    out = [
        "## Job streams on one task\n",
        "`python -m bench.streams` (tokens flowing: a chunk every 0.1 s or so) and "
        "`python -m bench.streams --gap-ms 5000 --output streams-quiet` (a quiet task): N "
        "`/stream` readers of one task, the proxy's CPU and peak memory over each window. "
        "*before*: the same script at bd91ced, when every stream read the store every 0.25 s; "
        "now one watcher per task fans out to its streams (proxy/jobs/watch.py).",
    ]
    findings = []
    for name, label in (
        ("streams", "tokens flowing"),
        ("streams-before", "tokens flowing, before"),
        ("streams-quiet", "quiet task"),
        ("streams-quiet-before", "quiet task, before"),
    ):
        if name in results:
            out += ["", f"**{label}**", "", streams.render(results[name])]
            runs = results[name]["runs"]
            if len(runs) > 1 and runs[0]["proxy_cpu_share"]:
                findings.append(
                    f"Job streams ({label}): {runs[-1]['streams']} streams cost the proxy "
                    f"{fmt(runs[-1]['proxy_cpu_share'] / runs[0]['proxy_cpu_share'], 1)}x the CPU of "
                    f"{runs[0]['streams']}."
                )
    return "\n".join(out), findings


def _servers_section(sv: dict) -> tuple[str, list[str]]:
    from bench import servers

    s = sv["settings"]
    out = [
        "## HTTP servers for the proxy, side by side\n",
        "`python -m bench.servers`: the same app behind each HTTP server, each in front of its own "
        "manager and stand-in upstream, the servers taking turns "
        f"({s['repeats']} repeats of {s['duration_s']:.0f} s per point). *uvicorn-guarded* ships "
        "(`wire.http_server`: the deadlines and caps of docs/security.md); *uvicorn-plain* is the "
        "proxy's server before them. The goals (issue 23): at most "
        f"{TARGET_GATEWAY_CPU_MS:g} ms of proxy CPU per request and +1 ms added p99 at one client, "
        "and the 64-client p99 within 3x its p50.",
        "",
        servers.render(sv),
    ]
    findings = []
    for name, row in sv["summary"].items():
        cpu = row.get("cpu_ms_per_req_c1")
        if cpu is not None:
            findings.append(
                f"{name}: {fmt(cpu, 3)} ms proxy CPU per request at one client "
                f"({'within' if cpu <= TARGET_GATEWAY_CPU_MS else 'over'} the "
                f"{TARGET_GATEWAY_CPU_MS:g} ms goal), 64-client p99/p50 "
                f"{fmt(row.get('p99_over_p50_cN'))}."
            )
    return "\n".join(out), findings


def _slowclients_section(sc: dict) -> tuple[str, list[str]]:
    from bench import slowclients

    s = sc["settings"]
    out = [
        "## Slow and idle clients\n",
        "`python -m bench.slowclients`: a keyed client (wrk, one keep-alive connection) sends the "
        "latency benchmark's chat request while N sockets without a key hold the proxy's door, "
        f"{s['per_address']} per loopback address, a third each idle, trickling a request's headers "
        f"and trickling its body (a byte every {s['trickle_s']} s); each one the proxy closes is "
        "opened again at once. The N = 0 row is the plain run, measured in the same process "
        f"between the others ({s['repeats']} repeats of {s['duration_s']:.0f} s per row). The "
        "deadlines that close them are in docs/security.md.",
        "",
        slowclients.render(sc),
    ]
    findings = []
    for row in sc["summary"]:
        if row["sockets"]:
            findings.append(
                f"{row['sockets']} slow sockets: the keyed client got {row['requests'] - row['errors']} "
                f"of {row['requests']} answers, p99 {fmt(row['p99_vs_none'])}x the run without them; "
                f"the longest a slow socket stayed open: "
                + ", ".join(
                    f"{k} {fmt(v, 1)} s" for k, v in row["open_s_max"].items() if v is not None
                )
                + "."
            )
    return "\n".join(out), findings


def _instructions_section(runs: list[dict]) -> tuple[str, list[str]]:
    """`bench.instructions` runs: main's first, the final (`after`) last, the steps between
    in the order they trimmed (most instructions first)."""
    order = {"main": 0, "after": 2}
    runs = sorted(runs, key=lambda r: (order.get(r["label"], 1), -r["instructions_per_request"]))
    first = runs[0]["instructions_per_request"]
    out = [
        "## The proxy's instructions per request\n",
        "`python -m bench.instructions --label LABEL`: the proxy under valgrind's callgrind, "
        "2000 sequential keep-alive chat requests per round (one client), the idle rate "
        "subtracted, the median of the rounds: a figure the machine's other load does not "
        "move. *main* is the proxy before issue 23's trims, each later row one trim more "
        "(the commits name them), *after* all of them.",
        "",
        table(
            ["run", "k instructions per request", "rounds", "vs first"],
            [
                [
                    r["label"],
                    fmt(r["instructions_per_request"] / 1000, 1),
                    ", ".join(fmt(x["instructions_per_request"] / 1000, 1) for x in r["rounds"]),
                    fmt(r["instructions_per_request"] / first, 3),
                ]
                for r in runs
            ],
        ),
    ]
    last = runs[-1]
    findings = [
        f"Proxy instructions per request: {fmt(first / 1000, 1)} k ({runs[0]['label']}) -> "
        f"{fmt(last['instructions_per_request'] / 1000, 1)} k ({last['label']}), "
        f"{fmt(100 * (1 - last['instructions_per_request'] / first), 1)}% fewer."
    ]
    return "\n".join(out), findings


def upstream_client_table(rows: list[dict]) -> str:
    """bench/upstream_client.py's summary rows as a table."""
    return table(
        [
            "case",
            "clients",
            "CPU µs/req lean / aiohttp",
            "req/s lean / aiohttp",
            "p50 ms lean / aiohttp",
            "p99 ms lean / aiohttp",
        ],
        [
            [
                r["case"],
                r["clients"],
                f"{fmt(r['lean_cpu_us_per_req'], 0)} / {fmt(r['aiohttp_cpu_us_per_req'], 0)}",
                f"{fmt(r['lean_req_per_s'], 0)} / {fmt(r['aiohttp_req_per_s'], 0)}",
                f"{fmt(r['lean_p50_ms'], 3)} / {fmt(r['aiohttp_p50_ms'], 3)}",
                f"{fmt(r['lean_p99_ms'], 3)} / {fmt(r['aiohttp_p99_ms'], 3)}",
            ]
            for r in rows
        ],
    )


def _upstream_client_section(uc: dict) -> tuple[str, list[str]]:
    """The lean upstream client against aiohttp's (bench/upstream_client.py)."""
    out = ["## Upstream client: lean vs aiohttp\n"]
    settings = uc["settings"]
    start = " ".join(str(x) for x in uc["machine"].get("loadavg_at_start", []))
    end = " ".join(str(x) for x in uc.get("loadavg_at_end", []))
    out.append(
        f"`{uc['command']}`: the proxy's one client for model servers (proxy/upstream.py, "
        "asyncio Protocol + httptools) against aiohttp's `ClientSession`, each set up as the "
        "proxy would (keep-alive, no decompression, connect and read timeouts), in one process "
        "under uvloop against the stand-in model server (its own process). Each round runs every "
        "case with both clients back to back, their order swapped every round; "
        f"{settings['rounds']} rounds of {settings['requests']} requests per case and client, "
        "median over the rounds. *plain*: a chat answer read whole; *stream*: 20 SSE chunks read "
        "as they come. CPU µs/req: CPU time of the client's process per request (the client's "
        f"own cost; the harness's share is the same for both). Load average: {start} at the "
        f"start, {end} at the end (a shared machine: other sessions' work ran meanwhile)."
    )
    rows = uc["summary"]
    out.append("\n" + upstream_client_table(rows))
    plain = [r for r in rows if r["case"] == "plain"]
    findings = []
    if plain:
        saved = [r["aiohttp_cpu_us_per_req"] - r["lean_cpu_us_per_req"] for r in plain]
        factor = [r["aiohttp_cpu_us_per_req"] / r["lean_cpu_us_per_req"] for r in plain]
        findings.append(
            f"Upstream client: the lean client costs {min(factor):.1f} to {max(factor):.1f} times "
            f"less CPU per plain request than aiohttp's ({min(saved):.0f} to {max(saved):.0f} µs "
            "saved per request, against a proxy CPU of about 550 µs per proxied request above), "
            "so it stays the one client of all model traffic (proxy/modelcall.py)."
        )
        out.append("\n" + findings[0])
    return "\n".join(out), findings


def _warm_section(result: dict | None) -> str:
    """The warm tier on a GPU (`bench.warm`): its table with the card named, or how to get it."""
    from bench import warm

    head = "## Warm tier: swap to first token on a GPU"
    if result is None:
        return (
            f"{head}\n\nNot measured yet: `python -m bench.warm` needs a CUDA GPU (vLLM's sleep "
            "mode exists only there; the warm tier's logic is tested on the CPU). On the GPU PC: "
            "`python -m bench.warm --vllm-python PY --imageserver-python PY`, then "
            "`python -m bench.report`."
        )
    return (
        f"{head}\n\n`{result['command']}`: per model, seconds from the move (a cold start, nothing, "
        "a wake from sleep level 1 or 2, an unpark) to the first token or picture, median of the "
        "rounds; *cold / this* is how many times faster than the model's cold start. Memory is "
        "NVML's used GPU memory and the server's resident host memory (its process group).\n\n"
        + warm.render(result)
    )


def render() -> str:
    names = [
        "latency",
        "latency-before",
        "streaming",
        "swap",
        "swap-before",
        "swap-fit",
        "storm",
        "jobs",
        "memory",
        "faults",
        "faults-before",
        "upstream-client",
        "slowclients",
        "servers",
        "streams",
        "streams-before",
        "streams-quiet",
        "streams-quiet-before",
    ]
    results = {n: r for n in names if (r := read_json(n)) is not None}
    bigbody = [r for n in ("bigbody-before", "bigbody-after") if (r := read_json(n)) is not None]
    if not results:
        raise SystemExit("no results under bench/results/: run bench/run_all.sh first")
    parts = [
        "# Benchmarks: what the proxy and the manager cost",
        "",
        "<!-- Generated by `python -m bench.report` from bench/results/*.json. Do not edit by hand: "
        "rerun `bench/run_all.sh`. -->",
        "",
        "Every figure compares the gateway path (client, proxy, lease from the manager, model server) with "
        "the direct path (client, model server) against the same fast stand-in model server "
        "(`bench/upstream.py`, tens of microseconds per request) on loopback, so what is measured is the "
        "gateway's own cost. Read the ratios and the CPU per request: absolute times depend on the machine "
        "and on what else ran on it (the *other load* column).",
        "",
        "Rerun: `bench/run_all.sh` (everything, about 10 minutes, then this page), or one script: "
        "`python -m bench.latency`, `python -m bench.streaming`, `python -m bench.swap`, "
        "`python -m bench.storm`, `python -m bench.jobs`, `python -m bench.memory`, `python -m bench.upstream_client`; then `python -m bench.report`. Raw numbers: "
        "`bench/results/*.json` and `*.csv`.",
        "",
        "## Machine",
        "",
        _machine_section(results),
        "",
    ]
    lat = results.get("latency")
    if lat:
        loads = [
            r["other_cpu_s"] / r["wall_s"] / (lat["machine"].get("nproc") or 1)
            for r in lat["runs"]
            if r["wall_s"]
        ]
        busy = max(loads, default=0.0)
        if busy > 0.2:
            parts += [
                f"**Noisy run:** other processes used up to {busy * 100:.0f}% of the machine's CPU during the "
                "latency runs (median per point in the *other load* column), so latencies and req/s below are "
                "depressed and spread; CPU per request and the direct/proxied ratios hold better. Rerun on a "
                "quiet machine for final numbers.",
                "",
            ]
    findings: list[str] = []
    sections = [
        ("latency", _latency_section),
        ("streaming", _streaming_section),
        ("swap", _swap_section),
        ("storm", _storm_section),
        ("jobs", _jobs_section),
        ("memory", _memory_section),
    ]
    for name, fn in sections:
        if name == "latency" and name in results:
            text, found = _latency_section(results[name], before=results.get("latency-before"))
            parts += [text, ""]
            findings += found
        elif name == "swap" and name in results:
            text, found = _swap_section(
                results[name], results.get("swap-before"), results.get("swap-fit")
            )
            parts += [text, ""]
            findings += found
        elif name in results:
            text, found = fn(results[name])
            parts += [text, ""]
            findings += found
        else:
            parts += [f"## {name}\n\nNot run: bench/results/{name}.json is missing.", ""]
    if "faults" in results:
        text, found = _faults_section(results["faults"], results.get("faults-before"))
        parts += [text, ""]
        findings += found
    else:
        parts += ["## faults\n\nNot run: bench/results/faults.json is missing.", ""]
    if "upstream-client" in results:
        text, found = _upstream_client_section(results["upstream-client"])
        parts += [text, ""]
        findings += found
    if "servers" in results:
        text, found = _servers_section(results["servers"])
        parts += [text, ""]
        findings += found
    if "streams" in results:
        text, found = _streams_section(results)
        parts += [text, ""]
        findings += found
    if "slowclients" in results:
        text, found = _slowclients_section(results["slowclients"])
        parts += [text, ""]
        findings += found
    instructions = [
        r
        for path in sorted(RESULTS.glob("instructions-*.json"))
        if (r := read_json(path.stem)) is not None
    ]
    if instructions:
        text, found = _instructions_section(instructions)
        parts += [text, ""]
        findings += found
    if bigbody:
        text, found = _bigbody_section(bigbody)
        parts += [text, ""]
        findings += found
    parts += [_warm_section(read_json("warm")), ""]
    parts += ["## Findings (computed from the numbers above)", ""]
    parts += [f"- {f}" for f in findings]
    parts.append("")
    return "\n".join(parts)


def main() -> int:
    text = render()
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
