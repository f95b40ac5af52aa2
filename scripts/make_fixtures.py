#!/usr/bin/env python3
"""Extra parity cases, made with diffusers on tiny random models: transformer forwards and
whole text-to-image pipeline calls.

The shared fixtures (../shared/fixtures) cover a few configurations; these cover the others a
port must get right in general: odd token grids, patch size 1, learn_sigma and qk_norm off,
num_kv_heads null, other GQA ratios, ffn multipliers, batches of three with uneven (right- or
left-padded) captions, position interpolation and NTK factors, proportional attention,
Lumina2 out_channels and uniform-length batches (no joint mask).

Pipeline cases cover negative prompts, non-square sizes, two prompts of different lengths,
guidance off, CFG truncation, renormalisation off, a static-shift and a shift != 1 scheduler.

Layout per case, identical to the shared fixtures:
    <out>/<family>/<case>/{call.json, io.safetensors, transformer/ | pipeline/}

Run (needs torch, diffusers, transformers; CI never runs it, the output is committed):
    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch diffusers transformers safetensors
    /tmp/refenv/bin/python scripts/make_fixtures.py transformers crates/lumina/tests/fixtures
    /tmp/refenv/bin/python scripts/make_fixtures.py pipelines crates/lumina-pipelines/tests/fixtures
    /tmp/refenv/bin/pip install PyWavelets
    /tmp/refenv/bin/python scripts/make_fixtures.py imaging crates/lumina-pipelines/tests/fixtures
"""

import json
import sys
from pathlib import Path

import diffusers.models.attention
import torch
from diffusers import Lumina2Transformer2DModel, LuminaNextDiT2DModel
from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina
from safetensors.torch import save_file

TOLERANCE = 1e-4
# diffusers computes the FFN SiLU in f32 even in an f64 model; make the f64 reference exact.
diffusers.models.attention.FP32SiLU.forward = lambda self, x: torch.nn.functional.silu(x)


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every weight random so that every path matters, with the statistics of the shared
    fixtures: matrices N(0, 1/fan_in), norm weights 1 ± 0.1, gates N(0, 0.5²), other vectors
    N(0, 0.05²)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("gate"):
                p.copy_(0.5 * noise)
            elif p.ndim == 1:
                p.copy_(0.05 * noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)


def caption_mask(lengths, width, left=False):
    mask = torch.zeros(len(lengths), width, dtype=torch.int64)
    for i, n in enumerate(lengths):
        if left:
            mask[i, width - n :] = 1
        else:
            mask[i, :n] = 1
    return mask


def tolerance(out32: torch.Tensor, out64: torch.Tensor) -> tuple[float, float]:
    """The bar: 1e-4, or 3x torch's own f32-vs-f64 gap on an ill-conditioned case."""
    gap = float((out32.double() - out64).abs().max())
    return max(TOLERANCE, float(f"{3 * gap:.0e}")), gap


def write_case(root: Path, family: str, name: str, model, call: dict, io: dict, out64) -> None:
    case = root / family / name
    case.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(case / "transformer", safe_serialization=True)
    save_file({k: v.contiguous() for k, v in io.items()}, str(case / "io.safetensors"))
    tol, gap = tolerance(io["output"], out64)
    call = {**call, "timestep_convention": "0 = pure noise, 1 = data", "tolerance_max_abs": tol,
            "torch_f32_vs_f64_max_abs": float(f"{gap:.3e}")}
    (case / "call.json").write_text(json.dumps(call, indent=2) + "\n")
    print(f"{family}/{name}: output {tuple(io['output'].shape)}, f32-f64 gap {gap:.1e}, tolerance {tol:.0e}")


def next_case(root, name, seed, config, latent_hw, lengths, width, linear=1.0, ntk=1.0, base=None, left=False):
    gen = torch.Generator().manual_seed(seed)
    model = LuminaNextDiT2DModel(**config).eval()
    randomize(model, gen)
    b, (h, w) = len(lengths), latent_hw
    x = torch.randn(b, config["in_channels"], h, w, generator=gen)
    t = torch.rand(b, generator=gen)
    cap = torch.randn(b, width, config["cross_attention_dim"], generator=gen)
    mask = caption_mask(lengths, width, left)
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    rope = get_2d_rotary_pos_embed_lumina(head_dim, 384, 384, linear_factor=linear, ntk_factor=ntk)
    kwargs = {} if base is None else {"base_sequence_length": base}
    with torch.no_grad():
        out = model(x, t, cap, mask, rope, cross_attention_kwargs=kwargs, return_dict=False)[0]
        out64 = model.double()(x.double(), t.double(), cap.double(), mask, rope.to(torch.complex128),
                               cross_attention_kwargs=kwargs, return_dict=False)[0]
    model.float()
    call = {"model": "LuminaNextDiT2DModel", "rope_grid": 384, "linear_factor": linear, "ntk_factor": ntk, "base_sequence_length": base}
    io = {"hidden_states": x, "timestep": t, "encoder_hidden_states": cap, "encoder_mask": mask, "output": out}
    write_case(root, "nextdit", name, model, call, io, out64)


def lumina2_case(root, name, seed, config, latent_hw, lengths, width):
    gen = torch.Generator().manual_seed(seed)
    model = Lumina2Transformer2DModel(**config).eval()
    randomize(model, gen)
    b, (h, w) = len(lengths), latent_hw
    x = torch.randn(b, config["in_channels"], h, w, generator=gen)
    t = torch.rand(b, generator=gen)
    cap = torch.randn(b, width, config["cap_feat_dim"], generator=gen)
    mask = caption_mask(lengths, width)
    with torch.no_grad():
        out = model(x, t, cap, mask, return_dict=False)[0]
        out64 = model.double()(x.double(), t.double(), cap.double(), mask, return_dict=False)[0]
    model.float()
    io = {"hidden_states": x, "timestep": t, "encoder_hidden_states": cap, "encoder_mask": mask, "output": out}
    write_case(root, "lumina2", name, model, {"model": "Lumina2Transformer2DModel"}, io, out64)


def main(root: Path) -> None:
    next_base = dict(sample_size=16, patch_size=2, in_channels=4, hidden_size=48, num_layers=2,
                     num_attention_heads=4, num_kv_heads=2, multiple_of=16, ffn_dim_multiplier=None,
                     norm_eps=1e-5, learn_sigma=True, qk_norm=True, cross_attention_dim=24, scaling_factor=1.0)
    # odd 3x5 token grid, GQA 4:1, ffn multiplier, batch of 3 with uneven captions, PI factor
    next_case(root, "odd_grid_gqa4_batch3_pi", 1,
              {**next_base, "hidden_size": 64, "num_attention_heads": 8, "num_kv_heads": 2, "ffn_dim_multiplier": 1.3},
              (6, 10), [7, 3, 5], 8, linear=1.5)
    # patch 1 on an odd grid, learn_sigma and qk_norm off, kv heads null (= heads), NTK + prop. attention
    next_case(root, "patch1_plain_ntk_prop", 2,
              {**next_base, "patch_size": 1, "learn_sigma": False, "qk_norm": False, "num_kv_heads": None},
              (5, 7), [4, 6], 6, ntk=3.0, base=20)
    # MHA, wider heads, left-padded captions (the Gemma tokenizer's default side), 3 layers
    next_case(root, "mha_left_padded", 3,
              {**next_base, "hidden_size": 48, "num_attention_heads": 3, "num_kv_heads": 3, "num_layers": 3,
               "cross_attention_dim": 40, "multiple_of": 32},
              (8, 8), [2, 9, 5], 9, left=True)
    # both factors at once, 4 layers, a 16x12 latent
    next_case(root, "both_factors_deep", 4, {**next_base, "num_layers": 3},
              (16, 12), [5, 5], 5, linear=2.0, ntk=2.0, base=64)

    l2_base = dict(sample_size=16, patch_size=2, in_channels=4, out_channels=None, hidden_size=48, num_layers=2,
                   num_refiner_layers=1, num_attention_heads=4, num_kv_heads=2, multiple_of=16,
                   ffn_dim_multiplier=None, norm_eps=1e-5, scaling_factor=1.0, axes_dim_rope=[4, 4, 4],
                   axes_lens=[64, 64, 64], cap_feat_dim=24)
    # batch of 3 uneven captions, odd 3x5 grid, GQA 4:1, ffn multiplier, 2 refiner layers, out 8 channels
    lumina2_case(root, "odd_grid_gqa4_batch3", 5,
                 {**l2_base, "hidden_size": 64, "num_attention_heads": 8, "num_kv_heads": 2, "axes_dim_rope": [2, 2, 4],
                  "ffn_dim_multiplier": 0.7, "num_refiner_layers": 2, "num_layers": 1, "out_channels": 8},
                 (6, 10), [7, 2, 4], 9)
    # patch 1, MHA, equal caption lengths (no joint mask), other axis split
    lumina2_case(root, "patch1_mha_uniform", 6,
                 {**l2_base, "patch_size": 1, "num_kv_heads": 4, "axes_dim_rope": [2, 6, 4]},
                 (5, 7), [6, 6], 8)
    # 3 main layers, one full caption row, one short
    lumina2_case(root, "deep_full_and_short", 7, {**l2_base, "num_layers": 3, "cap_feat_dim": 16},
                 (8, 8), [10, 1], 10)


# ---------------------------------------------------------------- pipelines

SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
WORD_TOKENIZER = SHARED / "pipeline_next" / "two_prompts" / "pipeline" / "tokenizer"


def word_tokenizer(side: str):
    """The shared fixtures' word-level tokenizer under transformers' Gemma tokenizer class,
    padding on `side` (the class default is left)."""
    from tokenizers import Tokenizer
    from transformers import GemmaTokenizerFast

    tok = GemmaTokenizerFast(tokenizer_object=Tokenizer.from_file(str(WORD_TOKENIZER / "tokenizer.json")),
                             bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
                             mask_token="<mask>")
    tok.padding_side = side
    return tok


def tiny_vae(scaling, shift, gen):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(4, 4, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4,
                        norm_num_groups=2, sample_size=32, scaling_factor=scaling, shift_factor=shift).eval()
    with torch.no_grad():
        for _, p in vae.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) / (p[0].numel() ** 0.5))
    return vae


def pipeline_case(root, family, name, seed, call, scheduler_kwargs):
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, LuminaPipeline
    from transformers import Gemma2Config, Gemma2Model, GemmaConfig, GemmaModel

    gen = torch.Generator().manual_seed(seed)
    if family == "pipeline_next":
        transformer = LuminaNextDiT2DModel(sample_size=4, patch_size=2, in_channels=4, hidden_size=32, num_layers=2,
                                           num_attention_heads=2, num_kv_heads=1, multiple_of=16, learn_sigma=True,
                                           qk_norm=True, cross_attention_dim=16).eval()
        encoder = GemmaModel(GemmaConfig(vocab_size=90, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                         pad_token_id=0, bos_token_id=2, eos_token_id=1)).eval()
        vae, tok, cls = tiny_vae(0.13025, None, gen), word_tokenizer("left"), LuminaPipeline
    else:
        transformer = Lumina2Transformer2DModel(sample_size=4, patch_size=2, in_channels=4, hidden_size=32,
                                                num_layers=2, num_refiner_layers=1, num_attention_heads=2,
                                                num_kv_heads=1, multiple_of=16, axes_dim_rope=[4, 6, 6],
                                                axes_lens=[300, 64, 64], cap_feat_dim=16).eval()
        encoder = Gemma2Model(Gemma2Config(vocab_size=90, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                           query_pre_attn_scalar=8, sliding_window=6, pad_token_id=0,
                                           bos_token_id=2, eos_token_id=1), ).eval()
        vae, tok, cls = tiny_vae(0.3611, 0.1159, gen), word_tokenizer("right"), Lumina2Pipeline
    randomize(transformer, gen)
    with torch.no_grad():
        for key, p in encoder.named_parameters():
            if "norm" in key:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    scheduler = FlowMatchEulerDiscreteScheduler(**scheduler_kwargs)
    pipe = cls(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=tok)
    pipe.set_progress_bar_config(disable=True)

    prompts = call["prompt"]
    b = len(prompts)
    h, w = call["height"] // 8, call["width"] // 8
    init = torch.randn(b, 4, h, w, generator=gen)
    do_cfg = call["guidance_scale"] > 1
    if family == "pipeline_next":
        embeds, mask, _, _ = pipe.encode_prompt(prompts, do_cfg, negative_prompt=call.get("negative_prompt"),
                                                clean_caption=True)
    else:
        embeds, mask, _, _ = pipe.encode_prompt(prompts, do_cfg, negative_prompt=call.get("negative_prompt"))
    with torch.no_grad():
        latents = pipe(**call, latents=init.clone(), output_type="latent").images
        image = pipe(**call, latents=init.clone(), output_type="np").images
    case = root / family / name
    pipe.save_pretrained(case / "pipeline", safe_serialization=True)
    # the saved tokenizer.json must be the word-level one the pipeline ran with
    tok.backend_tokenizer.save(str(case / "pipeline" / "tokenizer" / "tokenizer.json"))
    save_file({"init_latents": init, "prompt_embeds": embeds.contiguous(), "prompt_attention_mask": mask,
               "latents": latents.contiguous(), "image": torch.from_numpy(image).contiguous()}, str(case / "io.safetensors"))
    (case / "call.json").write_text(json.dumps(call, indent=2) + "\n")
    print(f"{family}/{name}: image {tuple(image.shape)}, mask {mask.tolist()}")


def pipelines(root: Path) -> None:
    two = ["a big red circle on the left", "a tiny cat"]
    pipeline_case(root, "pipeline_next", "negative_wide_two_prompts", 11,
                  {"prompt": two, "negative_prompt": ["a dog", "blue square"], "height": 48, "width": 80,
                   "num_inference_steps": 5, "guidance_scale": 3.0}, {})
    pipeline_case(root, "pipeline_next", "no_guidance_tall_shift2", 12,
                  {"prompt": ["a green triangle above a star"], "negative_prompt": None, "height": 96,
                   "width": 32, "num_inference_steps": 3, "guidance_scale": 1.0}, {"shift": 2.0})
    pipeline_case(root, "pipeline_lumina2", "negative_trunc_no_renorm", 13,
                  {"prompt": two, "negative_prompt": "a dog", "height": 64, "width": 32,
                   "num_inference_steps": 5, "guidance_scale": 5.0, "cfg_trunc_ratio": 0.5,
                   "cfg_normalization": False}, {"shift": 6.0, "use_dynamic_shifting": True})
    pipeline_case(root, "pipeline_lumina2", "static_shift_renorm", 14,
                  {"prompt": ["the house of the tree"], "negative_prompt": None, "height": 32, "width": 80,
                   "num_inference_steps": 4, "guidance_scale": 4.0, "cfg_trunc_ratio": 0.75,
                   "cfg_normalization": True}, {"shift": 3.0})


def imaging(root: Path) -> None:
    """The image operations around I-Max and img2img: the VAE encoder's posterior mean (diffusers
    `latent_dist.mode()`, then shift and scale as the pipelines do), PyTorch's bicubic resize,
    and PyWavelets' Haar low-pass (decompose, zero every detail band, reconstruct)."""
    import numpy as np
    import pywt

    gen = torch.Generator().manual_seed(21)
    vae = tiny_vae(0.3611, 0.1159, gen)
    case = root / "imaging" / "encode_resize_haar"
    image = torch.rand(1, 48, 40, 3, generator=gen)  # (B, H, W, 3) in [0, 1]
    with torch.no_grad():
        mean = vae.encode(image.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    latents = (mean - vae.config.shift_factor) * vae.config.scaling_factor
    small = torch.rand(2, 3, 8, 12, generator=gen, dtype=torch.float64)
    up = torch.nn.functional.interpolate(small, size=(20, 30), mode="bicubic", align_corners=False)
    down = torch.nn.functional.interpolate(small, size=(5, 7), mode="bicubic", align_corners=False)

    def lowpass(x, level):
        out = np.empty_like(x)
        for idx in np.ndindex(x.shape[:-2]):
            coeffs = pywt.wavedec2(x[idx], "haar", level=level)
            coeffs = [coeffs[0]] + [tuple(np.zeros_like(d) for d in band) for band in coeffs[1:]]
            rec = pywt.waverec2(coeffs, "haar")
            out[idx] = rec[: x.shape[-2], : x.shape[-1]]
        return out

    field = torch.rand(1, 2, 8, 12, generator=gen, dtype=torch.float64).numpy()
    io = {"image": image, "latents": latents.contiguous(), "small": small, "bicubic_up": up.contiguous(),
          "bicubic_down": down.contiguous(), "field": torch.from_numpy(field)}
    for level in (1, 2, 3):
        io[f"haar_{level}"] = torch.from_numpy(lowpass(field, level))
    case.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(case / "vae", safe_serialization=True)
    save_file({k: v.contiguous() for k, v in io.items()}, str(case / "io.safetensors"))
    (case / "call.json").write_text(json.dumps({"what": "vae encode, bicubic, haar"}, indent=2) + "\n")
    print(f"imaging: latents {tuple(latents.shape)}, bicubic {tuple(up.shape)} {tuple(down.shape)}")


if __name__ == "__main__":
    torch.manual_seed(0)
    what, out = sys.argv[1], Path(sys.argv[2])
    {"transformers": main, "pipelines": pipelines, "imaging": imaging}[what](out)
