#!/usr/bin/env python3
"""PyTorch side of `lumina bench`: times diffusers' LuminaNextDiT2DModel at the same config,
token counts, dtypes and thread count, and prints the ratio table against a `lumina bench
--json` report.

    cargo run --release -- bench --json > lumina.json
    python3 bench/torch_reference.py --compare lumina.json          # README table
    python3 bench/torch_reference.py --tokens 1024 --dtype bf16     # PyTorch alone

    LUMINA_ISA=avx2 cargo run --release -- bench --tokens 1024,4096 --json > avx2.json
    python3 bench/torch_reference.py --compare avx2.json --isa avx2 --against f32
        # both sides as on an AVX2-only CPU, every lumina dtype against PyTorch f32

    cargo run --release -- bench --pipeline --json > pipeline.json
    python3 bench/torch_reference.py --pipeline --compare pipeline.json   # whole pipelines

It makes its own virtual environment (bench/.venv, or $LUMINA_BENCH_VENV when that points to
one that already has torch and diffusers) and re-runs itself there. Each dtype runs in a
process of its own, like the Rust bench. Definitions match `lumina bench`: a *step* is one
transformer forward at batch 1; a *block* the median block of that forward (forward hooks);
a *linear* the SwiGLU's D -> ffn projection; *attention* one block's self-attention product
(SDPA, as diffusers runs it); FLOPs are counted by the same formula.

`--pipeline` times the whole text-to-image pipeline as `lumina bench --pipeline` does
(crates/lumina-cli/src/commands/bench_pipeline.rs says what each row is), at the configs of
bench/pipelines.json, with transformers' Gemma models and diffusers' transformer and
AutoencoderKL, as diffusers' LuminaPipeline and Lumina2Pipeline run them.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = ["torch==2.15.*", "diffusers==0.42.*", "transformers", "accelerate"]

# Lumina-Next 2B (diffusers scripts/convert_lumina_to_diffusers.py, NextDiT_2B_GQA_patch2)
CONFIG_2B = dict(sample_size=128, patch_size=2, in_channels=4, hidden_size=2304, num_layers=24,
                 num_attention_heads=32, num_kv_heads=8, multiple_of=256, ffn_dim_multiplier=None,
                 norm_eps=1e-5, learn_sigma=True, qk_norm=True, cross_attention_dim=2048,
                 scaling_factor=1.0)


def ensure_venv() -> None:
    """Re-executes this script inside a virtual environment with torch and diffusers."""
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
        return
    except ImportError:
        pass
    venv = Path(os.environ.get("LUMINA_BENCH_VENV", HERE / ".venv"))
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} with {' '.join(REQUIREMENTS)} …", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


def ffn_hidden(cfg: dict) -> int:
    hidden = int(2 * 4 * cfg["hidden_size"] / 3)
    if cfg["ffn_dim_multiplier"] is not None:
        hidden = int(cfg["ffn_dim_multiplier"] * hidden)
    m = cfg["multiple_of"]
    return m * ((hidden + m - 1) // m)


def flops(cfg: dict, n: int, l: int) -> tuple[float, float]:
    """The same count as `lumina bench` (crates/lumina-cli/src/commands/bench.rs)."""
    d = cfg["hidden_size"]
    dh = d // cfg["num_attention_heads"]
    dkv = cfg["num_kv_heads"] * dh
    cap, f = cfg["cross_attention_dim"], ffn_hidden(cfg)
    dc = min(d, 1024)
    block = (2 * n * (d * d + 2 * d * dkv) + 2 * l * cap * 2 * dkv + 4 * n * n * d + 4 * n * l * d
             + 2 * n * d * d + 2 * n * 3 * d * f + 2 * dc * 4 * d)
    p2 = cfg["patch_size"] ** 2
    out_ch = cfg["in_channels"] * (2 if cfg["learn_sigma"] else 1)
    step = cfg["num_layers"] * block + 2 * n * p2 * cfg["in_channels"] * d + 2 * n * d * p2 * out_ch
    return float(block), float(step)


def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def measure(args: argparse.Namespace, dtype_name: str) -> dict:
    import torch
    from diffusers import LuminaNextDiT2DModel
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    cfg = dict(CONFIG_2B)
    if args.layers:
        cfg["num_layers"] = args.layers
    name = "next-dit-2b" if not args.layers else f"next-dit-2b/{args.layers}-layers"
    before = rss_bytes("VmRSS")
    print(f"torch {dtype_name}: building {name} with random weights…", file=sys.stderr)
    with torch.device("cpu"):
        torch.set_default_dtype(dtype)
        model = LuminaNextDiT2DModel(**cfg).eval()
        torch.set_default_dtype(torch.float32)
    # Tie attn2's query to attn1's, as the conversion of every released checkpoint does (one
    # upstream `attention.wq` and `q_norm` serve both) and as `lumina bench` draws its weights;
    # diffusers still computes the projection twice.
    for layer in model.layers:
        layer.attn2.to_q.weight = layer.attn1.to_q.weight
        if layer.attn1.norm_q is not None:
            layer.attn2.norm_q = layer.attn1.norm_q
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    loaded = rss_bytes("VmRSS")
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    rope = get_2d_rotary_pos_embed_lumina(head_dim, 384, 384)
    results = []
    for n in args.tokens:
        side = int(round(n ** 0.5)) * cfg["patch_size"]
        x = torch.randn(1, cfg["in_channels"], side, side, dtype=dtype)
        t = torch.tensor([0.5], dtype=dtype)
        cap = torch.randn(1, args.caption_tokens, cfg["cross_attention_dim"], dtype=dtype)
        mask = torch.ones(1, args.caption_tokens, dtype=torch.bool)
        blocks: list[float] = []
        marks: dict[int, float] = {}

        def pre(i):
            return lambda *_: marks.__setitem__(i, time.perf_counter())

        def post(i):
            return lambda *_: blocks.append(time.perf_counter() - marks[i])

        hooks = []
        for i, layer in enumerate(model.layers):
            hooks.append(layer.register_forward_pre_hook(pre(i)))
            hooks.append(layer.register_forward_hook(post(i)))
        best_step, best_block = float("inf"), float("inf")
        with torch.no_grad():
            for _ in range(args.repeat):
                blocks.clear()
                start = time.perf_counter()
                model(x, t, cap, mask, rope, cross_attention_kwargs={}, return_dict=False)
                best_step = min(best_step, time.perf_counter() - start)
                best_block = min(best_block, sorted(blocks)[len(blocks) // 2])
            for h in hooks:
                h.remove()
            lin = model.layers[0].feed_forward.linear_1
            xl = torch.randn(n, cfg["hidden_size"], dtype=dtype)
            best_linear = float("inf")
            for _ in range(max(3, args.repeat)):
                start = time.perf_counter()
                lin(xl)
                best_linear = min(best_linear, time.perf_counter() - start)
            # one block's self-attention product alone, as diffusers' attention processor runs
            # it (SDPA, kv heads repeated to the query heads)
            heads, kv = cfg["num_attention_heads"], cfg["num_kv_heads"]
            q = torch.randn(1, heads, n, head_dim, dtype=dtype)
            k = torch.randn(1, kv, n, head_dim, dtype=dtype).repeat_interleave(heads // kv, dim=1)
            v = torch.randn(1, kv, n, head_dim, dtype=dtype).repeat_interleave(heads // kv, dim=1)
            best_attention = float("inf")
            for _ in range(max(3, args.repeat)):
                start = time.perf_counter()
                torch.nn.functional.scaled_dot_product_attention(q, k, v)
                best_attention = min(best_attention, time.perf_counter() - start)
        block_f, step_f = flops(cfg, n, args.caption_tokens)
        linear_f = 2.0 * n * cfg["hidden_size"] * ffn_hidden(cfg)
        attention_f = 4.0 * n * n * heads * head_dim
        for what, secs, f in [("linear", best_linear, linear_f), ("attention", best_attention, attention_f),
                              ("block", best_block, block_f), ("step", best_step, step_f)]:
            print(f"torch {dtype_name} {n:>5} tokens {what:<6} {secs * 1e3:>10.1f} ms "
                  f"{f / secs / 1e9:>7.1f} GFLOP/s", file=sys.stderr)
            results.append(dict(name=what, config=name, tokens=n, dtype=dtype_name, ms=secs * 1e3,
                                gflops=f / secs / 1e9))
    memory = dict(dtype=dtype_name, config=name, weight_bytes=weight_bytes,
                  rss_model_bytes=max(0, loaded - before), peak_rss_bytes=rss_bytes("VmHWM"))
    return dict(results=results, memory=memory)


def torch_dtype_of(ours: str, against: str | None = None) -> str:
    """The PyTorch run a lumina row is compared with: `against` when given (every row against
    one PyTorch dtype), else ternary against bf16 (what TerDiT's own deployment runs: bf16
    GEMMs on dequantised weights) and the others against the same dtype."""
    if against:
        return against
    return "bf16" if ours == "ternary" else ours


# What makes PyTorch run as on a CPU of a lower level, so that `LUMINA_ISA=avx2` on an AVX-512
# machine is compared with PyTorch as an AVX2-only CPU runs it: ATen's vectorised kernels
# (ATEN_CPU_CAPABILITY), MKL's GEMMs (MKL_ENABLE_INSTRUCTIONS) and oneDNN's
# (ONEDNN_MAX_CPU_ISA) each have their own cap.
ISA_CAPS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def compare(ours: dict, theirs: dict, against: str | None = None) -> str:
    """Markdown: time of lumina / time of PyTorch per (what, tokens, dtype)."""
    index = {(r["name"], r["tokens"], r["dtype"]): r for r in theirs["results"]}
    rows = ["| what | tokens | lumina dtype | PyTorch dtype | lumina ms | PyTorch ms | lumina / PyTorch |",
            "|---|---:|---|---|---:|---:|---:|"]
    for r in ours["results"]:
        theirs_dtype = torch_dtype_of(r["dtype"], against)
        t = index.get((r["name"], r["tokens"], theirs_dtype))
        if t is None:
            continue
        rows.append(f"| {r['name']} | {r['tokens']} | {r['dtype']} | {theirs_dtype} | {r['ms']:.1f} | "
                    f"{t['ms']:.1f} | {r['ms'] / t['ms']:.2f}× |")
    return "\n".join(rows)


PIPELINES = json.loads((HERE / "pipelines.json").read_text())
TOTAL_STEPS = 30


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def fastest(repeat: int, f) -> float:
    best = float("inf")
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - start)
    return best


def measure_pipeline(args: argparse.Namespace, name: str, dtype_name: str) -> dict:
    """One pipeline in one dtype: the components built one after another with random weights."""
    import torch
    import transformers
    from diffusers import AutoencoderKL, Lumina2Transformer2DModel, LuminaNextDiT2DModel
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype_name]
    spec = PIPELINES[name]
    n_cap = spec["caption_tokens"]
    results, memory = [], []

    def row(what, size, secs):
        print(f"torch {name} {dtype_name} {what:<16} {size or '-':>6} {secs * 1e3:>10.1f} ms", file=sys.stderr)
        results.append(dict(pipeline=name, dtype=dtype_name, name=what, size=size, ms=secs * 1e3))

    def build(make):
        with torch.device("cpu"):
            torch.set_default_dtype(dtype)
            try:
                return make().eval()
            finally:
                torch.set_default_dtype(torch.float32)

    # text encoding: the CFG pair, as the pipelines run it (hidden_states[-2])
    reset_peak()
    enc = dict(spec["text_encoder"])
    kind = enc.pop("model_type")
    config_cls = {"gemma": transformers.GemmaConfig, "gemma2": transformers.Gemma2Config}[kind]
    model_cls = {"gemma": transformers.GemmaModel, "gemma2": transformers.Gemma2Model}[kind]
    print(f"torch {name} {dtype_name}: building the text encoder with random weights…", file=sys.stderr)
    encoder = build(lambda: model_cls(config_cls(**enc)))
    ids = (2 + (torch.arange(2 * n_cap) * 7919) % (enc["vocab_size"] - 2)).reshape(2, n_cap)
    mask = torch.zeros(2, n_cap, dtype=torch.long)
    mask[0] = 1
    mask[1, 0] = 1
    with torch.no_grad():
        encode = fastest(args.repeat, lambda: encoder(input_ids=ids, attention_mask=mask,
                                                      output_hidden_states=True).hidden_states[-2])
    del encoder
    row("text encoding", None, encode)
    memory.append(dict(pipeline=name, dtype=dtype_name, name="text encoding", peak_rss_bytes=rss_bytes("VmHWM")))

    # one step: the transformer at batch 2
    reset_peak()
    tcfg = {k: v for k, v in spec["transformer"].items() if not k.startswith("_")}
    next_dit = spec["transformer"]["_class_name"] == "LuminaNextDiT2DModel"
    print(f"torch {name} {dtype_name}: building the transformer with random weights…", file=sys.stderr)
    transformer = build(lambda: (LuminaNextDiT2DModel if next_dit else Lumina2Transformer2DModel)(**tcfg))
    cap_dim = tcfg["cross_attention_dim"] if next_dit else tcfg["cap_feat_dim"]
    steps = []
    with torch.no_grad():
        for size in args.sizes:
            x = torch.randn(2, tcfg["in_channels"], size // 8, size // 8, dtype=dtype)
            t = torch.tensor([0.5, 0.5], dtype=dtype)
            cap = torch.randn(2, n_cap, cap_dim, dtype=dtype)
            if next_dit:
                rope = get_2d_rotary_pos_embed_lumina(tcfg["hidden_size"] // tcfg["num_attention_heads"], 384, 384)
                call = lambda: transformer(x, t, cap, mask.bool(), rope, cross_attention_kwargs={}, return_dict=False)
            else:
                call = lambda: transformer(x, t, cap, mask, return_dict=False)
            step = fastest(args.repeat, call)
            row("step", size, step)
            steps.append(step)
    del transformer
    memory.append(dict(pipeline=name, dtype=dtype_name, name="step", peak_rss_bytes=rss_bytes("VmHWM")))

    # VAE decode, one image
    reset_peak()
    vcfg = {k: v for k, v in spec["vae"].items() if not k.startswith("_")}
    print(f"torch {name} {dtype_name}: building the VAE with random weights…", file=sys.stderr)
    vae = build(lambda: AutoencoderKL(**vcfg))
    with torch.no_grad():
        for size, step in zip(args.sizes, steps):
            z = torch.randn(1, vcfg["latent_channels"], size // 8, size // 8, dtype=dtype)
            decode = fastest(args.repeat, lambda: vae.decode(z, return_dict=False))
            row("VAE decode", size, decode)
            row("total, 30 steps", size, encode + TOTAL_STEPS * step + decode)
    del vae
    memory.append(dict(pipeline=name, dtype=dtype_name, name="VAE decode", peak_rss_bytes=rss_bytes("VmHWM")))
    return dict(results=results, memory=memory)


def compare_pipeline(ours: dict, theirs: dict) -> str:
    """Markdown: lumina / diffusers per (pipeline, component, size, dtype), then peak memory."""
    index = {(r["pipeline"], r["name"], r["size"], r["dtype"]): r for r in theirs["results"]}
    rows = ["| pipeline | what | size | dtype | lumina ms | diffusers ms | lumina / diffusers |",
            "|---|---|---:|---|---:|---:|---:|"]
    for r in ours["results"]:
        t = index.get((r["pipeline"], r["name"], r["size"], r["dtype"]))
        if t is None:
            continue
        size = "–" if r["size"] is None else r["size"]
        rows.append(f"| {r['pipeline']} | {r['name']} | {size} | {r['dtype']} | {r['ms']:.0f} | {t['ms']:.0f} | "
                    f"{r['ms'] / t['ms']:.2f}× |")
    mem = {(m["pipeline"], m["name"], m["dtype"]): m for m in theirs["memory"]}
    rows += ["", "| pipeline | component | dtype | lumina peak | diffusers peak | ratio |", "|---|---|---|---:|---:|---:|"]
    gib = 1 << 30
    for m in ours["memory"]:
        t = mem.get((m["pipeline"], m["name"], m["dtype"]))
        if t is None:
            continue
        rows.append(f"| {m['pipeline']} | {m['name']} | {m['dtype']} | {m['peak_rss_bytes'] / gib:.2f} GiB | "
                    f"{t['peak_rss_bytes'] / gib:.2f} GiB | {m['peak_rss_bytes'] / t['peak_rss_bytes']:.2f}× |")
    return "\n".join(rows)


def main_pipeline(args: argparse.Namespace, ours) -> None:
    if ours is not None:
        args.sizes = ",".join(sorted({str(r["size"]) for r in ours["results"] if r["size"]}, key=int))
        args.dtype = ",".join(dict.fromkeys(r["dtype"] for r in ours["results"]))
        args.pipeline = ",".join(dict.fromkeys(r["pipeline"] for r in ours["results"]))
    args.sizes = [int(s) for s in str(args.sizes).split(",")]
    names = [n for n in PIPELINES if not n.startswith("_")] if args.pipeline == "all" else args.pipeline.split(",")
    for n in names:
        if n not in PIPELINES:
            sys.exit(f"--pipeline {n}: unknown pipeline (known: {', '.join(k for k in PIPELINES if k[0] != '_')})")
    ensure_venv()
    if args.child:
        print(json.dumps(measure_pipeline(args, names[0], args.dtype)))
        return
    results, memory = [], []
    for name in names:
        for dtype in args.dtype.split(","):
            cmd = [sys.executable, __file__, "--child", "--pipeline", name, "--dtype", dtype,
                   "--threads", str(args.threads), "--sizes", ",".join(map(str, args.sizes)),
                   "--repeat", str(args.repeat)]
            out = json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout)
            results += out["results"]
            memory += out["memory"]
    import torch
    theirs = dict(torch=torch.__version__, threads=args.threads, results=results, memory=memory)
    print(json.dumps(theirs) if ours is None else compare_pipeline(ours, theirs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="256,1024,4096")
    p.add_argument("--dtype", default="f32,bf16")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--caption-tokens", type=int, default=128)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--compare", type=Path, help="a `lumina bench --json` report: run its sizes and print ratios")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pipeline", nargs="?", const="all", default=None,
                   help="time whole pipelines (lumina-next-sft, lumina-image-2; default both)")
    p.add_argument("--sizes", default="512,1024", help="with --pipeline: square image sizes")
    p.add_argument("--against", choices=["f32", "bf16"],
                   help="with --compare: every lumina row against this PyTorch dtype")
    p.add_argument("--isa", choices=sorted(ISA_CAPS),
                   help="cap PyTorch's kernels at this level (as on a CPU without AVX-512), "
                        "to compare with `LUMINA_ISA=avx2 lumina bench`")
    args = p.parse_args()
    if args.isa:
        os.environ.update(ISA_CAPS[args.isa])
    ours = None
    if args.compare:
        ours = json.loads(args.compare.read_text())
    if args.pipeline is not None:
        main_pipeline(args, ours)
        return
    if ours is not None:
        args.tokens = ",".join(sorted({str(r["tokens"]) for r in ours["results"]}, key=int))
        args.dtype = ",".join(dict.fromkeys(torch_dtype_of(r["dtype"], args.against)
                                            for r in ours["results"]))
        configs = {r["config"] for r in ours["results"]}
        layered = [c for c in configs if "/" in c]
        if layered:
            args.layers = int(layered[0].split("/")[1].split("-")[0])
    args.tokens = [int(t) for t in str(args.tokens).split(",")]
    ensure_venv()
    if args.child:
        print(json.dumps(measure(args, args.dtype)))
        return
    results, memory = [], []
    for dtype in args.dtype.split(","):
        cmd = [sys.executable, __file__, "--child", "--dtype", dtype, "--threads", str(args.threads),
               "--tokens", ",".join(map(str, args.tokens)), "--caption-tokens", str(args.caption_tokens),
               "--repeat", str(args.repeat)]
        if args.layers:
            cmd += ["--layers", str(args.layers)]
        out = json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout)
        results += out["results"]
        memory.append(out["memory"])
    import torch
    capability = torch.backends.cpu.get_cpu_capability()
    theirs = dict(torch=torch.__version__, threads=args.threads, capability=capability,
                  results=results, memory=memory)
    if ours is None:
        print(json.dumps(theirs))
    else:
        print(f"PyTorch {torch.__version__}, kernels {capability}, {args.threads} threads\n")
        print(compare(ours, theirs, args.against))


if __name__ == "__main__":
    main()
