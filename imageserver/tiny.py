"""A tiny random-weight Stable Diffusion pipeline, built offline, for tests and the demo.

    python -m imageserver.tiny OUT_DIR [--kind text2image|image2image] [--seed 0]

writes a diffusers folder (model_index.json + unet, vae, text_encoder,
tokenizer, scheduler; about 8 MB) that `DiffusionPipeline.from_pretrained`,
`AutoPipelineForText2Image` and `AutoPipelineForImage2Image` load. The
components follow diffusers' own fast tests (a small UNet2DConditionModel,
AutoencoderKL, CLIPTextModel, DDIMScheduler); the CLIP tokenizer is built
from a byte-level vocabulary, so nothing is downloaded. The VAE has four
blocks, so, like the real models, it downsamples by 8. The pictures are
noise; every line of loading and generation code that runs on them is the
real one.

`--kind image2image` saves the same weights as a StableDiffusionImg2ImgPipeline,
which the server classifies as an edit-only model.

`--gguf Q8_0` also writes the UNet as a GGUF file (`denoiser_gguf`), for models.json's
`quantize` `gguf` (`gguf_file`).

Building blocks for a few seconds on the CPU and is deterministic for a seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

KINDS = ("text2image", "image2image")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def _tokenizer():
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in _bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build(out_dir: str | Path, *, kind: str = "text2image", seed: int = 0) -> Path:
    """Build the tiny pipeline and save it to `out_dir` (created). Returns the folder.

    Blocks for a few seconds; raises ValueError for an unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    tokenizer = _tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
        )
    )
    cls = StableDiffusionPipeline if kind == "text2image" else StableDiffusionImg2ImgPipeline
    pipe = cls(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    return out


def denoiser_gguf(pipeline_dir: str | Path, out_file: str | Path, *, qtype: str = "Q8_0") -> Path:
    """Write the pipeline's UNet (or transformer) as a GGUF file, the way GGUF conversions
    of diffusion models are laid out: diffusers' tensor names, each 2-D weight whose rows
    fit the type's blocks in `qtype` (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), the rest in F32.
    Returns the file. Needs the `gguf` package. For the tests of models.json's
    `quantize` `gguf` (diffusers loads it with ``from_single_file``)."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    kind = gguf.GGMLQuantizationType[qtype]
    block, _ = gguf.GGML_QUANT_SIZES[kind]
    folder = Path(pipeline_dir)
    name = "transformer" if (folder / "transformer").is_dir() else "unet"
    weights = load_file(str(next((folder / name).glob("*.safetensors"))))
    out = Path(out_file)
    writer = gguf.GGUFWriter(str(out), arch=name)
    for key, tensor in weights.items():
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[-1] % block == 0:
            packed = gguf.quants.quantize(array, kind)
            writer.add_tensor(key, packed, raw_shape=packed.shape, raw_dtype=kind)
        else:
            writer.add_tensor(key, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imageserver.tiny",
        description="Write a tiny random-weight diffusers pipeline (about 8 MB) to OUT_DIR.",
    )
    parser.add_argument("out_dir", help="folder to write (created if missing)")
    parser.add_argument("--kind", choices=KINDS, default="text2image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--gguf",
        metavar="QTYPE",
        help="also write its UNet as OUT_DIR/unet-QTYPE.gguf (e.g. Q8_0; needs `gguf`)",
    )
    args = parser.parse_args(argv)
    path = build(args.out_dir, kind=args.kind, seed=args.seed)
    print(path)
    if args.gguf:
        print(denoiser_gguf(path, path / f"unet-{args.gguf}.gguf", qtype=args.gguf))
    return 0


if __name__ == "__main__":
    sys.exit(main())
