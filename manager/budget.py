"""The GPU memory budget: how much GPU memory the models may share, checked against
models.json, and each text model's share handed to vLLM.

Where the budget comes from (`resolve`), first that applies:

1. ``HOMELAB_GPU_BUDGET_MIB`` (the manager's setting);
2. models.json's ``$gpu_budget_mib``;
3. the card's total memory from NVML less ``HOMELAB_GPU_RESERVE_MIB`` (the desktop, the
   CUDA contexts of other programs);
4. none: one model at a time, as without declarations.

A model's *cost* is its ``gpu_memory_mib``; a model that declares none costs the whole
budget (it runs alone), and without a budget every model does. The scheduler's policy
(`manager.policy`) keeps the sum of the residents' costs within the budget.

`check` refuses, naming the file, the key and the reason, a catalogue that could never
run as declared: a model bigger than the budget, pinned models that do not leave room
for each other model, a pinned model without a declaration or without a budget, a pinned
model with an idle TTL, and a vLLM model on the GPU whose own
``--gpu-memory-utilization`` contradicts its declaration. `apply` then gives each vLLM
model on the GPU its share of the card as ``--gpu-memory-utilization`` (declaration /
card total, rounded down) unless its args set one. Pure: no NVML here; the card's total
is passed in.

A llama.cpp model on the GPU that declares no ``gpu_memory_mib`` gets an estimate
(`with_estimates`, `llama_cpp_mib`) from its GGUF file's header (`manager.gguf`): the
file's size times the share of its layers offloaded (``-ngl`` of the layers plus the
output layer), plus the KV cache of its context on those layers (f16 keys and values:
context x layers x kv heads x (key + value length) x 2 bytes), plus `LLAMA_COMPUTE_MIB`
for llama.cpp's compute buffers. A file the manager cannot read leaves it undeclared (it
runs alone). docs/adding-models.md ("GGUF models") works an example.

An image model on the GPU that declares none is planned from its loading options
(`with_image_estimates`, `manager.image_footprints`: a table per known pipeline, published
figures where they exist), and from the footprint the manager learned once it has loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from manager import image_footprints
from manager.errors import CatalogueError
from manager.gguf import GgufShape
from manager.spec import AnyModel, Catalogue, ImageModel, TextModel, served_by_vllm

LLAMA_COMPUTE_MIB = 256
"""llama.cpp's compute buffers on the GPU (batch activations, logits) in the estimate:
about what llama-server reports for a 7-8B model at its default batch size."""
MIB = 1024 * 1024

UTILIZATION_FLAG = "--gpu-memory-utilization"
TOLERANCE = 0.10
"""How far (share of the declaration) an explicit vLLM utilization may be from it."""


@dataclass(frozen=True)
class GpuBudget:
    """The memory the models may share (None: one model at a time) and the card's total,
    both in MiB, with where the budget came from (for logs and errors)."""

    mib: int | None
    total_mib: int | None
    source: str

    def cost(self, spec: AnyModel) -> int | None:
        """What `spec` takes of the budget; None: the whole of it (it runs alone)."""
        if self.mib is None:
            return None
        return spec.gpu_memory_mib


def resolve(
    *, setting_mib: int | None, catalogue_mib: int | None, card_mib: int | None, reserve_mib: int
) -> GpuBudget:
    """The budget from the setting, else the catalogue's, else the card less the reserve."""
    if setting_mib is not None:
        return GpuBudget(
            setting_mib, card_mib or setting_mib + reserve_mib, "HOMELAB_GPU_BUDGET_MIB"
        )
    if catalogue_mib is not None:
        return GpuBudget(
            catalogue_mib, card_mib or catalogue_mib + reserve_mib, "models.json $gpu_budget_mib"
        )
    if card_mib is not None and card_mib > reserve_mib:
        return GpuBudget(
            card_mib - reserve_mib,
            card_mib,
            f"the card's {card_mib} MiB less HOMELAB_GPU_RESERVE_MIB {reserve_mib}",
        )
    return GpuBudget(None, card_mib, "none (no NVML, no setting): one model at a time")


def explicit_utilization(args: list[str]) -> float | None:
    """The ``--gpu-memory-utilization`` a vLLM argument list sets, or None. Raises
    ValueError for a value that is not a number."""
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag.replace("_", "-") != UTILIZATION_FLAG:
            continue
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        return float(value)
    return None


def check(catalogue: Catalogue, budget: GpuBudget) -> None:
    """Raise CatalogueError (file, key, reason) if the catalogue cannot run as declared."""
    src, models = catalogue.source, catalogue.models
    pinned = {name: spec for name, spec in models.items() if spec.pinned}
    for name, spec in pinned.items():
        if budget.mib is None:
            raise CatalogueError(
                src, f"{name}.pinned", f"needs a GPU budget (there is {budget.source})"
            )
        if spec.gpu_memory_mib is None:
            raise CatalogueError(
                src, f"{name}.pinned", "needs gpu_memory_mib: an undeclared model runs alone"
            )
        if spec.idle_ttl is not None:
            raise CatalogueError(
                src, f"{name}.idle_ttl", "a pinned model is never stopped for idleness"
            )
    pinned_mib = sum(spec.gpu_memory_mib or 0 for spec in pinned.values())
    for name, spec in models.items():
        need = spec.gpu_memory_mib
        if budget.mib is not None and need is not None and need > budget.mib:
            raise CatalogueError(
                src,
                f"{name}.gpu_memory_mib",
                f"{need} MiB is more than the GPU budget of {budget.mib} MiB ({budget.source})",
            )
        if pinned and not spec.pinned and budget.mib is not None:
            cost = budget.mib if need is None else need
            if cost + pinned_mib > budget.mib:
                raise CatalogueError(
                    src,
                    f"{name}.gpu_memory_mib",
                    f"{cost} MiB does not fit beside the pinned models' {pinned_mib} MiB in the "
                    f"GPU budget of {budget.mib} MiB",
                )
        _check_utilization(catalogue, name, budget)
    if budget.mib is not None and pinned_mib > budget.mib:
        raise CatalogueError(
            src, "", f"the pinned models take {pinned_mib} MiB, more than the budget {budget.mib}"
        )


def _check_utilization(catalogue: Catalogue, name: str, budget: GpuBudget) -> None:
    spec = catalogue.models[name]
    if not served_by_vllm(spec) or not spec.gpu:
        return
    try:
        share = explicit_utilization(spec.args)
    except ValueError:
        raise CatalogueError(
            catalogue.source, f"{name}.args", f"{UTILIZATION_FLAG} needs a number"
        ) from None
    need, total = spec.gpu_memory_mib, budget.total_mib
    if share is None or need is None or total is None or budget.mib is None:
        return
    implied = share * total
    if abs(implied - need) > TOLERANCE * max(need, 1):
        raise CatalogueError(
            catalogue.source,
            f"{name}.args",
            f"{UTILIZATION_FLAG} {share:g} gives vLLM {implied:.0f} MiB of the card's {total} MiB, "
            f"but gpu_memory_mib declares {need} MiB: drop the flag (the manager derives it) "
            "or make them agree",
        )


def share(need_mib: int, total_mib: int) -> str:
    """vLLM's ``--gpu-memory-utilization`` for `need_mib` of a `total_mib` card, rounded
    down to three decimals (never 0)."""
    return f"{max(0.001, math.floor(need_mib / total_mib * 1000) / 1000):.3f}"


def apply(catalogue: Catalogue, budget: GpuBudget) -> Catalogue:
    """`check`, then the catalogue with each declared vLLM model on the GPU given its share
    of the card (unless its args set one). Raises CatalogueError."""
    check(catalogue, budget)
    if budget.mib is None or budget.total_mib is None:
        return catalogue
    models = dict(catalogue.models)
    for name, spec in models.items():
        if (
            served_by_vllm(spec)
            and spec.gpu
            and spec.gpu_memory_mib
            and explicit_utilization(spec.args) is None
        ):
            args = [*spec.args, UTILIZATION_FLAG, share(spec.gpu_memory_mib, budget.total_mib)]
            models[name] = spec.model_copy(update={"args": args})
    return catalogue.model_copy(update={"models": models})


def llama_cpp_mib(shape: GgufShape, gpu_layers: int, context: int) -> int:
    """The estimated GPU memory (MiB) of a GGUF model run by llama.cpp with `gpu_layers`
    offloaded (-ngl) and a context of `context` tokens: the weights' share, the KV cache
    on the offloaded layers and `LLAMA_COMPUTE_MIB`, rounded up."""
    offloaded = min(gpu_layers, shape.layers + 1)  # the output layer is the last one
    weights = shape.file_bytes * offloaded / (shape.layers + 1)
    kv_per_token = min(gpu_layers, shape.layers) * shape.kv_heads
    kv = context * kv_per_token * (shape.key_length + shape.value_length) * 2
    return math.ceil((weights + kv) / MIB) + LLAMA_COMPUTE_MIB


def with_estimates(catalogue: Catalogue, shapes: dict[str, GgufShape]) -> Catalogue:
    """The catalogue with each llama.cpp model on the GPU that declares no
    ``gpu_memory_mib`` given `llama_cpp_mib` of its shape in `shapes` (by model name;
    a model missing there stays undeclared)."""
    models = dict(catalogue.models)
    for name, spec in models.items():
        if name in shapes and needs_estimate(spec):
            assert isinstance(spec, TextModel)
            mib = llama_cpp_mib(shapes[name], spec.llama_gpu_layers, spec.llama_context)
            models[name] = spec.model_copy(update={"gpu_memory_mib": mib})
    return catalogue.model_copy(update={"models": models})


def needs_estimate(spec: AnyModel) -> bool:
    """A llama.cpp model on the GPU without a ``gpu_memory_mib`` of its own."""
    return (
        isinstance(spec, TextModel)
        and spec.backend == "llama.cpp"
        and spec.gpu
        and spec.gpu_memory_mib is None
    )


def with_image_estimates(
    catalogue: Catalogue, learned: dict[str, list[int]], budget_mib: int | None = None
) -> Catalogue:
    """The catalogue with each image model on the GPU that declares no ``gpu_memory_mib``
    planned at `manager.image_footprints.planned`: the largest of its `learned` footprints
    (MiB, by model name) once there are any, else the estimate from its loading options
    for a known pipeline. An unknown pipeline, or a plan over `budget_mib`, leaves it
    undeclared: it runs alone, as before. How each was planned goes into
    ``catalogue.estimated``."""
    models = dict(catalogue.models)
    estimated = dict(catalogue.estimated)
    for name, spec in models.items():
        if not isinstance(spec, ImageModel) or not spec.gpu or spec.gpu_memory_mib is not None:
            continue
        plan = image_footprints.planned(spec, learned.get(name, []))
        if plan is not None and (budget_mib is None or plan.mib <= budget_mib):
            models[name] = spec.model_copy(update={"gpu_memory_mib": plan.mib})
            estimated[name] = plan.how
    return catalogue.model_copy(update={"models": models, "estimated": estimated})
