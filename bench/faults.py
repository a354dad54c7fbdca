"""Faults: requests lost per fault kind and time to recover, with the real manager (process
runtime), the real proxy, stand-in model servers and the `openai` SDK.

    python -m bench.faults                 # every fault kind, writes bench/results/faults.json
    python -m bench.faults --only model_kill --output faults-before

The fault kinds and the stack are the integration tier's (tests/integration/faults/): the
test asserts their counts, this reports them with the times (death noticed after, manager
back after, first answer after a kill). Ports 18700-18799.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from bench import procstat
from bench.common import command_line, write_json
from tests.integration.faults import scenarios
from tests.integration.faults.stack import fault_stack

KINDS = {
    "model_kill": scenarios.model_kill,
    "manager_restart_1s": lambda s: scenarios.manager_restart(s, 1.0),
    "manager_restart_5s": lambda s: scenarios.manager_restart(s, 5.0),
    "spawn_kill": scenarios.spawn_kill,
    "image_flood": scenarios.image_flood,
}


def run(kind: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="homelab-faults-") as work:
        with fault_stack(Path(work)) as stack:
            result = asyncio.run(KINDS[kind](stack))
    return result.summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--only", action="append", choices=sorted(KINDS))
    parser.add_argument("--output", default="faults")
    args = parser.parse_args(argv)
    kinds = args.only or list(KINDS)
    results = {"machine": procstat.machine(), "faults": {}}
    for kind in kinds:
        results["faults"][kind] = summary = run(kind)
        print(kind, summary, flush=True)
    results["command"] = command_line("bench.faults", argv)
    path = write_json(args.output, results)
    print(f"raw numbers: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
