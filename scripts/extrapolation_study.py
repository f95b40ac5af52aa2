#!/usr/bin/env python3
"""Tuning-free resolution extrapolation of a `shapes` model, judged: accuracy by size and method.

Runs `lumina eval --json --width W --height H --extrapolation M` once per cell (every method at
every size, all on the same prompt list and seeds) and prints two markdown tables — accuracy,
and seconds per image — with the methods as rows and the sizes as columns. Results are kept in
a JSON file as they come, so an interrupted study continues where it stopped.

    python3 scripts/extrapolation_study.py                           # the built-in model
    python3 scripts/extrapolation_study.py --model runs/x/model --per-kind 10 --seeds 2 \\
        --sizes 64x64,96x96 --methods none,imax:constant --results study.json
"""

import argparse
import json
import sys
from pathlib import Path

from quality_table import evaluate

SIZES = ["32x32", "48x48", "64x64", "96x96", "128x128", "64x32", "32x64", "96x32"]
# (label, eval flags): each method with the rest of the tuning-free toolkit as `--extrapolation`
# sets it (proportional attention with the RoPE rules; I-Max adds time shifting and the
# native-size pass).
METHODS = [
    ("none", {"extrapolation": "none"}),
    ("PI", {"extrapolation": "pi"}),
    ("NTK", {"extrapolation": "ntk"}),
    ("watershed 0.3 (Lumina-Next code)", {"extrapolation": "watershed:0.3"}),
    ("time-aware", {"extrapolation": "time-aware"}),
    ("frequency-aware", {"extrapolation": "frequency-aware"}),
    ("NTK∩PI (κ 10)", {"extrapolation": "ntk-pi"}),
    ("PI (per-axis scale)", {"extrapolation": "pi", "rope-scale-by": "per-axis"}),
    ("I-Max cosine_decay", {"extrapolation": "imax:cosine_decay"}),
    ("I-Max cosine_shift", {"extrapolation": "imax:cosine_shift"}),
    ("I-Max constant", {"extrapolation": "imax:constant"}),
    ("default", {}),
]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binary", default="target/release/lumina")
    p.add_argument("--model", default=None)
    p.add_argument("--per-kind", type=int, default=5)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--prompt-seed", type=int, default=11)
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument("--methods", default=None,
                   help="comma-separated labels of METHODS (default: all)")
    p.add_argument("--results", default="runs/extrapolation_study.json")
    args = p.parse_args()

    sizes = args.sizes.split(",")
    methods = METHODS
    if args.methods:
        wanted = args.methods.split(",")
        methods = [m for m in METHODS if m[0] in wanted]
    path = Path(args.results)
    results = json.loads(path.read_text()) if path.exists() else {}
    for label, flags in methods:
        for size in sizes:
            key = f"{label}|{size}|{args.model}|{args.per_kind}|{args.seeds}|{args.prompt_seed}"
            if key in results:
                continue
            w, h = size.split("x")
            r = evaluate(args.binary, args.model, args.per_kind, args.seeds, args.prompt_seed,
                         {"width": w, "height": h, **flags})
            results[key] = {"accuracy": r["accuracy"], "total": r["total"],
                            "seconds": r["seconds"], "faults": r.get("faults", {})}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1))
            print(f"{label:32} {size:8} {r['accuracy']:.3f}  {r['seconds']:.0f} s",
                  file=sys.stderr)

    def cell(label, size, field):
        key = f"{label}|{size}|{args.model}|{args.per_kind}|{args.seeds}|{args.prompt_seed}"
        return results.get(key, {}).get(field)

    head = "| method | " + " | ".join(sizes) + " |"
    rule = "|---|" + "---:|" * len(sizes)
    n = args.per_kind * 4 * args.seeds
    print(f"Accuracy ({n} images per cell: {args.per_kind} prompts per kind × {args.seeds} "
          f"seeds, prompt seed {args.prompt_seed}):\n")
    print(head)
    print(rule)
    for label, _ in methods:
        vals = [cell(label, s, "accuracy") for s in sizes]
        print(f"| {label} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in vals) + " |")
    print("\nSeconds per image (2 cores, wall time of the whole eval over its images):\n")
    print(head)
    print(rule)
    for label, _ in methods:
        vals = [(cell(label, s, "seconds"), cell(label, s, "total")) for s in sizes]
        print(f"| {label} | " + " | ".join(
            "–" if v is None else f"{v / t:.2f}" for v, t in vals) + " |")


if __name__ == "__main__":
    main()
