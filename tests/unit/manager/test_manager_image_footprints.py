"""Image models' loading options in models.json, and the GPU footprints that follow from
them: the table's estimates, the learned footprint that replaces them, `manager check`'s
plan, and the launch variables (fakes behind the real protocols for the scheduler)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from manager_fakes import CATALOGUE, FakeProbe, FakeRuntime

from manager import budget, image_footprints
from manager.__main__ import main
from manager.errors import CatalogueError
from manager.footprints import FootprintStore
from manager.launch import image_server_env
from manager.scheduler import Scheduler, SchedulerConfig
from manager.spec import ImageModel, load_catalogue, parse_catalogue

ROOT = Path(__file__).resolve().parents[3]
CONFIG = SchedulerConfig(
    queue_limit=16, queue_timeout=30, batch_bound=2, lease_ttl=120, standby=False
)
QWEN_Q4 = (
    "https://huggingface.co/QuantStack/Qwen-Image-Edit-GGUF/blob/main/Qwen_Image_Edit-Q4_0.gguf"
)


def image(model: str = "org/pix", **fields: object) -> ImageModel:
    return ImageModel(
        type="image",
        container="c",
        port=9000,
        image="homelab-ai/imageserver:0.1.0",
        model=model,
        **fields,
    )


def entry(**fields: object) -> dict:
    return {**CATALOGUE["pix"], **fields}


def refusal(**fields: object) -> CatalogueError:
    with pytest.raises(CatalogueError) as caught:
        parse_catalogue({"pix": entry(**fields)}, source="m.json")
    return caught.value


# ---------------------------------------------------------------- models.json refuses


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"quantize": "bnb-nf4", "device": "cpu"}, "bitsandbytes 4-bit (bnb-nf4) needs a CUDA GPU"),
        ({"text_encoder_quantize": "bnb-nf4", "device": "mps"}, "needs a CUDA GPU"),
        ({"quantize": "torchao-int4", "device": "cpu"}, "torchao int4"),
        ({"quantize": "gguf"}, "quantize 'gguf' needs gguf_file"),
        ({"gguf_file": "/m/unet-Q8_0.gguf"}, "gguf_file is only read with quantize 'gguf'"),
        ({"quantize": "gguf", "gguf_file": "/m/unet.safetensors"}, "must name a .gguf file"),
        ({"offload": "sequential", "device": "cpu"}, "offload 'sequential' needs a CUDA device"),
        ({"cpu_offload": True, "offload": "group-leaf"}, "cannot be combined with offload"),
        ({"quantize": "int8"}, "Input should be"),
        ({"text_encoder_quantize": "gguf"}, "Input should be"),
    ],
)
def test_impossible_loading_options_are_refused_naming_the_model(fields: dict, reason: str) -> None:
    error = refusal(**fields)
    assert str(error).startswith("m.json: ")
    assert "'pix" in str(error)  # the key path starts with the model's name
    assert reason in str(error)


def test_possible_combinations_are_accepted() -> None:
    spec = parse_catalogue(
        {
            "pix": entry(
                quantize="gguf",
                gguf_file=QWEN_Q4,
                text_encoder_quantize="bnb-nf4",
                offload="model",
                vae_slicing=True,
            )
        }
    ).models["pix"]
    assert isinstance(spec, ImageModel) and spec.load_offload == "model"
    assert image(cpu_offload=True).load_offload == "model"
    assert (
        image(device="cpu", quantize="quanto-int4", offload="group-leaf").load_offload
        == "group-leaf"
    )


def test_the_launch_passes_the_options_and_nothing_for_the_defaults() -> None:
    plain = image_server_env("pix", image(), 8000)
    assert not [
        k for k in plain if k.split("HOMELAB_IMAGE_")[1] in ("OFFLOAD", "QUANTIZE", "GGUF_FILE")
    ]
    env = image_server_env(
        "pix",
        image(
            quantize="gguf",
            gguf_file=QWEN_Q4,
            text_encoder_quantize="quanto-int8",
            offload="group-block",
            vae_slicing=True,
        ),
        8000,
    )
    assert env["HOMELAB_IMAGE_QUANTIZE"] == "gguf"
    assert env["HOMELAB_IMAGE_GGUF_FILE"] == QWEN_Q4
    assert env["HOMELAB_IMAGE_TEXT_ENCODER_QUANTIZE"] == "quanto-int8"
    assert env["HOMELAB_IMAGE_OFFLOAD"] == "group-block"
    assert env["HOMELAB_IMAGE_VAE_SLICING"] == "true"


# ---------------------------------------------------------------- the table


def test_a_published_figure_is_used_where_the_options_match_it() -> None:
    plan = image_footprints.estimate(image("black-forest-labs/FLUX.1-dev"))
    assert plan is not None and plan.how.startswith("published:")
    assert plan.mib == 34524  # 36.2 GB peak (bf16)
    gguf = image_footprints.estimate(
        image("black-forest-labs/FLUX.1-dev", quantize="gguf", gguf_file="/m/flux1-dev-Q4_1.gguf")
    )
    assert gguf is not None and gguf.how.startswith("published:") and gguf.mib == 20314


def test_other_options_are_computed_and_each_saving_shows() -> None:
    def mib(**fields: object) -> int:
        plan = image_footprints.estimate(image("black-forest-labs/FLUX.1-schnell", **fields))
        assert plan is not None and plan.how.startswith("computed: FLUX.1")
        return plan.mib

    int8 = mib(quantize="torchao-int8")
    both = mib(quantize="torchao-int8", text_encoder_quantize="torchao-int8")
    nf4 = mib(quantize="bnb-nf4", text_encoder_quantize="bnb-nf4")
    offloaded = mib(quantize="bnb-nf4", text_encoder_quantize="bnb-nf4", offload="model")
    tiled = mib(quantize="bnb-nf4", text_encoder_quantize="bnb-nf4", vae_tiling=True)
    leaf = mib(offload="group-leaf", vae_tiling=True)
    assert int8 > both > nf4 > offloaded > leaf
    assert nf4 > tiled  # the decode in tiles


def test_unknown_pipelines_and_gguf_types_have_no_estimate() -> None:
    assert image_footprints.estimate(image("/models/my-own-pipeline")) is None
    assert (
        image_footprints.estimate(
            image("Qwen/Qwen-Image-Edit", quantize="gguf", gguf_file="/m/qwen-edit.gguf")
        )
        is None
    )
    assert image_footprints.family(image("Qwen/Qwen-Image-Edit-2509")).name == "Qwen-Image-Edit"  # type: ignore[union-attr]


def test_qwen_image_edit_in_gguf_q4_and_a_14b_text_model_fit_a_24_gb_card() -> None:
    shipped = load_catalogue(ROOT / "models.json")
    card = budget.resolve(setting_mib=None, catalogue_mib=None, card_mib=24576, reserve_mib=1024)
    planned = budget.with_image_estimates(shipped, {}, card.mib)
    qwen, text = planned.models["qwen-image-edit"], planned.models["qwen2.5-14b-awq"]
    assert qwen.gpu_memory_mib is not None and text.gpu_memory_mib is not None
    assert qwen.gpu_memory_mib + text.gpu_memory_mib <= card.mib  # type: ignore[operator]
    assert "gguf:Q4_0" in planned.estimated["qwen-image-edit"]
    flux = planned.models["flux1-schnell"]
    assert flux.gpu_memory_mib + text.gpu_memory_mib <= card.mib  # type: ignore[operator]
    budget.apply(planned, card)  # and the budget checks accept it


# ---------------------------------------------------------------- learned, and planning


def test_learned_footprints_replace_the_estimate_and_a_declaration_wins() -> None:
    data = {
        "qwen": entry(model="Qwen/Qwen-Image-Edit", quantize="gguf", gguf_file=QWEN_Q4),
        "mine": {**entry(model="org/mine"), "container": "t-mine", "port": 18009},
        "sdxl": {
            **entry(model="stabilityai/stable-diffusion-xl-base-1.0", gpu_memory_mib=9000),
            "container": "t-sdxl",
            "port": 18010,
        },
    }
    cat = parse_catalogue(data)
    first = budget.with_image_estimates(cat, {})
    assert first.estimated["qwen"].startswith("computed:")
    assert first.models["mine"].gpu_memory_mib is None and "mine" not in first.estimated
    learned = budget.with_image_estimates(cat, {"qwen": [9000, 9400, 9100], "sdxl": [12000]})
    assert learned.models["qwen"].gpu_memory_mib == 9400
    assert learned.estimated["qwen"] == "learned: the most of 3 loads seen"
    assert learned.models["sdxl"].gpu_memory_mib == 9000  # declared in models.json
    over = budget.with_image_estimates(cat, {}, budget_mib=5000)
    assert over.models["qwen"].gpu_memory_mib is None  # over the budget: it runs alone


async def test_the_scheduler_plans_with_what_it_learned_from_then_on(tmp_path: Path) -> None:
    data = {
        "qwen": entry(
            model="Qwen/Qwen-Image-Edit",
            quantize="gguf",
            gguf_file=QWEN_Q4,
            text_encoder_quantize="bnb-nf4",
            offload="model",
        )
    }
    used = iter([1000, 12000])  # before the start, once ready

    async def gpu_used() -> int:
        return next(used)

    b = budget.resolve(setting_mib=20000, catalogue_mib=None, card_mib=20000, reserve_mib=0)
    cat = budget.apply(budget.with_image_estimates(parse_catalogue(data), {}, b.mib), b)
    estimate = cat.models["qwen"].gpu_memory_mib
    store = FootprintStore(tmp_path / "footprints.json")
    sched = Scheduler(
        cat, FakeRuntime(), FakeProbe(), CONFIG, budget=b, gpu_used=gpu_used, footprints=store
    )  # type: ignore[arg-type]
    try:
        sched.release((await sched.acquire("qwen")).lease_id)
        assert sched.model_status("qwen").gpu_memory_mib == 11000 != estimate
    finally:
        await sched.close()
    # and the next manager starts from it
    again = budget.with_image_estimates(
        parse_catalogue(data), FootprintStore(store.path).all_readings()
    )
    assert again.models["qwen"].gpu_memory_mib == 11000


def test_manager_check_shows_each_image_models_planned_footprint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(ROOT / "models.json")]) == 0
    out = capsys.readouterr().out
    assert "image qwen-image-edit: 13328 MiB planned (computed: Qwen-Image-Edit, gguf:Q4_0" in out
    assert "image flux1-schnell: " in out
    assert "image sdxl: 9000 MiB planned (declared in models.json)" in out
    prints = tmp_path / "footprints.json"
    prints.write_text(json.dumps({"models": {"qwen-image-edit": {"readings": [[1.0, 12345]]}}}))
    assert main(["check", str(ROOT / "models.json"), "--footprints", str(prints)]) == 0
    assert "image qwen-image-edit: 12345 MiB planned (learned: the most of 1 loads seen)" in (
        capsys.readouterr().out
    )
