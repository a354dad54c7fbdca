"""Print, as JSON, every path the real vLLM's app serves (its routes and mounts, also
those left out of its OpenAPI document) for vLLM's command-line arguments.

Run with vLLM's Python (``python tests/e2e/vllm_routes.py --model DIR``): it builds the
app as vLLM's server does (``build_app``, every task vLLM knows, no engine) and adds
the routes of every ``api_router`` module under ``vllm.entrypoints`` (the pooling ones,
``/pooling``, ``/classify``, ``/score``, ``/rerank``, ``/v1/embeddings``..., are only
added for a pooling model), so a path a new vLLM adds is listed here whether or not it
is documented or this model serves it. Used by
tests/e2e/test_vllm_cpu.py to check each path is refused without the upstream key.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import warnings
from typing import Any

warnings.simplefilter("ignore")

import vllm.entrypoints  # noqa: E402
from vllm.entrypoints.launchers.cli_args import make_arg_parser  # noqa: E402
from vllm.entrypoints.openai.api_server import build_app  # noqa: E402
from vllm.tasks import FRONTEND_TASKS, GENERATION_TASKS, POOLING_TASKS  # noqa: E402
from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: E402


def paths(routes: Any, prefix: str = "") -> set[str]:
    found: set[str] = set()
    for route in routes:
        path = prefix + getattr(route, "path", "")
        found.add(path or "/")
        if getattr(route, "routes", None) and not hasattr(route, "endpoint"):
            found |= paths(route.routes, path)
    return found


def router_paths() -> set[str]:
    """The paths of every `router` in a ``vllm.entrypoints...api_router`` module."""
    found: set[str] = set()
    for module in pkgutil.walk_packages(vllm.entrypoints.__path__, "vllm.entrypoints."):
        if not module.name.endswith(".api_router"):
            continue
        try:
            router = getattr(importlib.import_module(module.name), "router", None)
        except Exception:  # an optional dependency missing: its routes cannot be served
            continue
        if router is not None:
            found |= paths(router.routes)
    return found


def main() -> None:
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(sys.argv[1:])
    tasks = (*GENERATION_TASKS, *POOLING_TASKS, *FRONTEND_TASKS)
    app = build_app(args, supported_tasks=tasks)
    print(json.dumps(sorted(paths(app.routes) | router_paths())))


if __name__ == "__main__":
    main()
