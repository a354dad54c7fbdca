"""`python -m manager`: run the manager daemon, print the models.json schema, or check a file.

    python -m manager [serve]            run the daemon (settings from HOMELAB_* variables)
    python -m manager schema             print the JSON Schema of models.json
    python -m manager check FILE         validate a models.json file (and its GPU budget);
                                         prints each image model's planned GPU footprint
    python -m manager footprints         compare models.json's GPU declarations with
                                         the footprints the manager has seen (exit 1: over)

Configuration problems end the program with a one-line-per-problem message on
stderr and a non-zero status, never a traceback: exit 2 for bad settings, 1 for
a bad models.json or a runtime that cannot be built.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import cast

import uvicorn
from pydantic import ValidationError

from manager import budget as gpu_budget
from manager import footprints, image_footprints, warm
from manager.api import create_app
from manager.errors import CatalogueError, ManagerError
from manager.gguf import GgufError, GgufShape, read_shape
from manager.health import HttpReadinessProbe
from manager.lease_store import LeaseStore
from manager.probe import GpuReleaseCheck, ReadinessProbe
from manager.runtime import ContainerRuntime
from manager.scheduler import Scheduler, SchedulerConfig
from manager.settings import ManagerSettings
from manager.spec import Catalogue, ImageModel, json_schema, load_catalogue
from manager.warm import HttpWarmControl, SwapTimes
from wire import http_server

log = logging.getLogger("manager")

SHUTDOWN_GRACE = 10
"""Seconds uvicorn waits for open requests at shutdown before cancelling them."""
CONNECTION_LIMITS = http_server.ConnectionLimits(per_address=1024, max_connections=1024)
"""The manager's connections (`wire.http_server`): its clients are a few proxies, and a
waiting lease request holds one connection, so one address may hold them all; without
the token, a connection is the first shed (docs/security.md)."""

RUNTIMES = {
    "docker": ("manager.docker_runtime", "DockerRuntime"),
    "process": ("manager.process_runtime", "ProcessRuntime"),
}


class ConfigProblem(Exception):
    """A start-up problem to print as is and exit with `status`."""

    def __init__(self, message: str, status: int = 1) -> None:
        self.status = status
        super().__init__(message)


def load_settings() -> ManagerSettings:
    """ManagerSettings from the environment. Raises ConfigProblem naming each bad variable."""
    try:
        return ManagerSettings()  # the values come from the environment
    except ValidationError as exc:
        raise ConfigProblem(
            "invalid settings:\n" + ManagerSettings.describe(exc), status=2
        ) from exc


def load_models(path: str) -> Catalogue:
    """The catalogue at `path`. Raises ConfigProblem with "file: key 'x.y': reason"."""
    try:
        return load_catalogue(path)
    except CatalogueError as exc:
        raise ConfigProblem(str(exc)) from exc


def load_budget(settings: ManagerSettings, catalogue: Catalogue) -> gpu_budget.GpuBudget:
    """The GPU budget (setting, models.json, NVML total less the reserve, or none)."""
    card: int | None = None
    try:
        from manager.gpu import card_total_mib

        card = card_total_mib()
    except ImportError:
        card = None
    return gpu_budget.resolve(
        setting_mib=settings.gpu_budget_mib,
        catalogue_mib=catalogue.gpu_budget_mib,
        card_mib=card,
        reserve_mib=settings.gpu_reserve_mib,
    )


def budgeted(
    catalogue: Catalogue,
    budget: gpu_budget.GpuBudget,
    learned: dict[str, list[int]] | None = None,
) -> Catalogue:
    """`manager.budget.apply`, after estimating undeclared llama.cpp models from their GGUF
    files (`manager.budget.with_estimates`) and undeclared image models from their
    options or their `learned` footprints (`manager.budget.with_image_estimates`). Raises
    ConfigProblem naming file, key and reason."""
    try:
        catalogue = gpu_budget.with_image_estimates(catalogue, learned or {}, budget.mib)
        if budget.mib is not None:
            catalogue = gpu_budget.with_estimates(catalogue, gguf_shapes(catalogue))
        return gpu_budget.apply(catalogue, budget)
    except CatalogueError as exc:
        raise ConfigProblem(str(exc)) from exc


def gguf_shapes(catalogue: Catalogue) -> dict[str, GgufShape]:
    """The GGUF shape of each model `manager.budget.needs_estimate`s whose file this
    process can read; a warning for each it cannot (it then runs alone)."""
    shapes: dict[str, GgufShape] = {}
    for name, spec in catalogue.models.items():
        if not gpu_budget.needs_estimate(spec):
            continue
        try:
            shapes[name] = read_shape(spec.model)
        except (OSError, GgufError) as exc:
            log.warning(
                "%s: cannot read %s to estimate its GPU memory (%s): it runs alone; "
                "declare gpu_memory_mib",
                name,
                spec.model,
                exc,
            )
    return shapes


def _construct(module: str, attr: str, *args: object) -> object:
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigProblem(f"cannot load {module}.{attr}: {exc}") from exc
    try:
        return cls(*args)
    except ManagerError as exc:
        raise ConfigProblem(f"{attr}: {exc}") from exc


def build_runtime(settings: ManagerSettings) -> ContainerRuntime:
    """The runtime HOMELAB_RUNTIME names, imported only when chosen (the Docker runtime
    needs the docker SDK, the `manager` extra)."""
    module, attr = RUNTIMES[settings.runtime]
    return cast(ContainerRuntime, _construct(module, attr, settings))


def build_probe() -> ReadinessProbe:
    return HttpReadinessProbe()


def build_gpu_check(settings: ManagerSettings) -> GpuReleaseCheck | None:
    """`manager.gpu.wait_gpu_memory_released`, or None when the check is off (timeout 0)."""
    if settings.gpu_release_timeout <= 0:
        return None
    try:
        from manager.gpu import wait_gpu_memory_released
    except ImportError as exc:
        log.warning("GPU memory release check unavailable: %s", exc)
        return None
    return wait_gpu_memory_released


def host_budget_of(settings: ManagerSettings, runtime: ContainerRuntime) -> tuple[int | None, str]:
    """The host-memory budget of the warm tier (`manager.warm.host_budget`): the setting,
    else half of what the runtime sees (`host_total_mib`: Docker's engine info, or
    /proc/meminfo; /proc/meminfo too when the engine does not answer)."""
    if settings.host_budget_mib is not None:
        return warm.host_budget(settings.host_budget_mib, None)
    read = getattr(runtime, "host_total_mib", None)
    total = read() if read is not None else None
    # The engine not up yet (Docker Desktop starting): this machine's /proc/meminfo, which
    # inside WSL 2 (or the manager's container there) is the same VM's memory.
    return warm.host_budget(None, total or warm.meminfo_total_mib())


def build_gpu_meter() -> footprints.GpuUsed | None:
    """`manager.gpu.used_mib` (footprints), or None when NVML cannot be imported."""
    try:
        from manager.gpu import used_mib
    except ImportError:
        return None
    return used_mib


class ManagerServer(uvicorn.Server):
    """uvicorn's server, but shutting down closes the scheduler *first*: waiting lease
    requests get their 503 and event streams end, so open connections can finish
    instead of holding the shutdown (uvicorn waits for them before the lifespan ends)."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler) -> None:
        super().__init__(config)
        self.scheduler = scheduler

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.scheduler.close()
        await super().shutdown(sockets)


def build_server(settings: ManagerSettings) -> ManagerServer:
    """Everything `serve` runs: catalogue, runtime, probe, scheduler, app, server.
    Raises ConfigProblem."""
    budget = load_budget(settings, load_models(str(settings.models_file)))
    store = footprints.FootprintStore(settings.footprint_path())
    catalogue = budgeted(load_models(str(settings.models_file)), budget, store.all_readings())
    runtime = build_runtime(settings)
    probe = build_probe()
    host_mib, host_source = host_budget_of(settings, runtime)
    scheduler = Scheduler(
        catalogue,
        runtime,
        probe,
        SchedulerConfig.from_settings(settings),
        gpu_released=build_gpu_check(settings),
        lease_store=LeaseStore(settings.lease_path()),
        budget=budget,
        gpu_used=build_gpu_meter(),
        footprints=store,
        warm=HttpWarmControl() if host_mib is not None else None,
        host_budget_mib=host_mib,
        swap_times=SwapTimes(settings.swap_times_path()),
    )
    config = http_server.config(
        create_app(scheduler, settings),
        settings.manager_host,
        settings.manager_port,
        CONNECTION_LIMITS,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )
    log.info(
        "manager: %d models from %s, GPU budget %s MiB (%s), host-memory budget %s MiB (%s), "
        "%s runtime, listening on %s:%d",
        len(catalogue.models),
        catalogue.source,
        budget.mib if budget.mib is not None else "-",
        budget.source,
        host_mib if host_mib is not None else "-",
        host_source,
        settings.runtime,
        settings.manager_host,
        settings.manager_port,
    )
    return ManagerServer(config, scheduler)


def serve() -> int:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server = build_server(settings)
    gc.freeze()  # start-up's objects leave the collector's view (see proxy/__main__.py)
    server.run()
    return 0


def check(path: str, footprint_file: str | None = None) -> int:
    catalogue = load_models(path)
    budget = gpu_budget.resolve(
        setting_mib=None, catalogue_mib=catalogue.gpu_budget_mib, card_mib=None, reserve_mib=0
    )
    learned = (
        footprints.FootprintStore(Path(footprint_file)).all_readings() if footprint_file else {}
    )
    planned = budgeted(catalogue, budget, learned)
    names = catalogue.names()
    shown = (
        f"{budget.mib} MiB"
        if budget.mib is not None
        else "from the card (NVML total less HOMELAB_GPU_RESERVE_MIB) where the manager runs"
    )
    print(f"{path}: ok, {len(names)} models: {', '.join(names)}; GPU budget {shown}")
    for line in image_plan(planned):
        print(line)
    return 0


def image_plan(catalogue: Catalogue) -> list[str]:
    """One line per image model: the GPU memory it is planned with, and why."""
    lines = []
    for name in catalogue.names():
        spec = catalogue.models[name]
        if not isinstance(spec, ImageModel):
            continue
        if spec.gpu_memory_mib is None:
            plan = image_footprints.estimate(spec) if spec.gpu else None
            how = (
                f"runs alone: its estimate, {plan.mib} MiB ({plan.how}), is over the budget"
                if plan is not None
                else "runs alone: no gpu_memory_mib and no estimate for this pipeline"
            )
            mib = "-"
        else:
            how = catalogue.estimated.get(name, "declared in models.json")
            mib = f"{spec.gpu_memory_mib} MiB"
        lines.append(f"  image {name}: {mib} planned ({how})")
    return lines


def show_footprints(models: str, path: str) -> int:
    catalogue = load_models(models)
    lines, over = footprints.report(catalogue, footprints.FootprintStore(Path(path)))
    print("\n".join(lines))
    return 1 if over else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m manager", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the manager daemon (the default)")
    commands.add_parser("schema", help="print the JSON Schema of models.json")
    check_cmd = commands.add_parser(
        "check", help="validate a models.json file; show each image model's planned footprint"
    )
    check_cmd.add_argument("file")
    check_cmd.add_argument(
        "--footprints",
        default=None,
        help="a footprints.json whose learned footprints replace the image models' estimates",
    )
    prints = commands.add_parser(
        "footprints", help="compare GPU declarations with what was seen (exit 1: over)"
    )
    prints.add_argument("--models", default="models.json", help="the models.json to check")
    prints.add_argument(
        "--file",
        default=str(
            Path(
                os.environ.get(ManagerSettings.env_name("log_dir"))
                or ManagerSettings.default("log_dir")
            )
            / footprints.FOOTPRINT_FILE
        ),
        help="the manager's footprints file (default: footprints.json in HOMELAB_LOG_DIR)",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "schema":
            print(json.dumps(json_schema(), indent=2))
            return 0
        if args.command == "check":
            return check(args.file, args.footprints)
        if args.command == "footprints":
            return show_footprints(args.models, args.file)
        return serve()
    except ConfigProblem as exc:
        print(str(exc), file=sys.stderr)
        return exc.status


if __name__ == "__main__":
    sys.exit(main())
