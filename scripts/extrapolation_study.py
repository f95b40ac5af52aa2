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
]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binary", default="target/release/lumina")
    p.add_argument("--model", default=None)
    p.add_argument("--per-kind", type=int, default=5)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--large-seeds", type=int, default=1,
                   help="seeds for canvases larger than 64 × 64, whose images cost 3–10× more")
    p.add_argument("--table-only", action="store_true", help="print the tables, run nothing")
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
    def seeds(size):
        w, h = (int(v) for v in size.split("x"))
        return args.large_seeds if w * h > 64 * 64 else args.seeds

    def key(label, size):
        return f"{label}|{size}|{args.model}|{args.per_kind}|{seeds(size)}|{args.prompt_seed}"

    for label, flags in [] if args.table_only else methods:
        for size in sizes:
            if key(label, size) in results:
                continue
            w, h = size.split("x")
            r = evaluate(args.binary, args.model, args.per_kind, seeds(size), args.prompt_seed,
                         {"width": w, "height": h, **flags})
            results[key(label, size)] = {"accuracy": r["accuracy"], "total": r["total"],
                            "seconds": r["seconds"], "faults": r.get("faults", {})}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1))
            print(f"{label:32} {size:8} {r['accuracy']:.3f}  {r['seconds']:.0f} s",
                  file=sys.stderr)

    def cell(label, size):
        """The largest run of a method at a size, whatever its seed count."""
        prefix = f"{label}|{size}|{args.model}|{args.per_kind}|"
        runs = [r for k, r in results.items()
                if k.startswith(prefix) and k.endswith(f"|{args.prompt_seed}")]
        return max(runs, key=lambda r: r["total"], default=None)

    def column(size):
        totals = [c["total"] for c in (cell(m, size) for m, _ in methods) if c]
        return max(totals, default=0)

    def show(c, size, text):
        if c is None:
            return "–"
        return text if c["total"] == column(size) else f"{text} ({c['total']})"

    head = "| method | " + " | ".join(f"{s} ({column(s)})" for s in sizes) + " |"
    rule = "|---|" + "---:|" * len(sizes)
    print(f"Accuracy (images per cell in brackets; {args.per_kind} prompts per kind, prompt seed "
          f"{args.prompt_seed}; – not run):\n")
    print(head)
    print(rule)
    for label, _ in methods:
        print(f"| {label} | " + " | ".join(
            show(cell(label, s), s, f"{cell(label, s)['accuracy']:.3f}" if cell(label, s) else "")
            for s in sizes) + " |")
    print("\nSeconds per image (2 cores, wall time of the whole eval over its images):\n")
    print(head)
    print(rule)
    for label, _ in methods:
        c = [cell(label, s) for s in sizes]
        print(f"| {label} | " + " | ".join(
            show(x, s, f"{x['seconds'] / x['total']:.2f}" if x else "")
            for x, s in zip(c, sizes)) + " |")

if __name__ == "__main__":
    main()
