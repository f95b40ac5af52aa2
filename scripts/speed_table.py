#!/usr/bin/env python3
"""Accuracy against time per image of a `shapes` model's sampling settings, in one run.

Runs `lumina eval --json` once per setting — the defaults (20 midpoint steps), the sigmoid
schedule, fewer steps, CFG truncation, step caching, Context Drop, two-step Adams–Bashforth —
on the same prompt list and seeds, one after the other, and prints a markdown table: judge
accuracy, seconds per image (wall time of the whole evaluation over its images) and the ratio
to the defaults' time, measured in this same run.

    python3 scripts/speed_table.py                                   # the built-in model
    python3 scripts/speed_table.py --per-kind 50 --seeds 2 --prompt-seed 13
    python3 scripts/speed_table.py --rows 6,13 -W 64 -H 32   # some rows, another canvas
"""

import argparse
import sys
from pathlib import Path

from quality_table import evaluate

# (label, eval flags); the first is the reference every ratio is taken against: the built-in
# model's defaults. Rows name their steps and solver, so they keep their meaning should the
# model's defaults change.
MIDPOINT_20 = {"steps": 20, "solver": "midpoint"}
SETTINGS = [
    ("defaults (20 midpoint steps, shift 2, guidance 3)", MIDPOINT_20),
    ("sigmoid schedule, 20 midpoint steps", {**MIDPOINT_20, "schedule": "sigmoid"}),
    ("step cache 0.1", {**MIDPOINT_20, "cache-threshold": 0.1}),
    ("step cache 0.3", {**MIDPOINT_20, "cache-threshold": 0.3}),
    ("6 midpoint steps", {"steps": 6, "solver": "midpoint"}),
    ("5 midpoint steps", {"steps": 5, "solver": "midpoint"}),
    ("10 Euler steps", {"steps": 10, "solver": "euler"}),
    ("10 Euler steps, sigmoid", {"steps": 10, "solver": "euler", "schedule": "sigmoid"}),
    ("8 Euler steps", {"steps": 8, "solver": "euler"}),
    ("8 Euler steps, sigmoid", {"steps": 8, "solver": "euler", "schedule": "sigmoid"}),
    ("8 Euler steps, guidance for the first half", {"steps": 8, "solver": "euler",
                                                     "cfg-trunc-ratio": 0.5}),
    ("Context Drop 2 × 2 while t < 0.5", {**MIDPOINT_20, "context-drop": "2:0.5"}),
    ("12 AB2 steps", {"steps": 12, "solver": "ab2"}),
    ("10 AB2 steps", {"steps": 10, "solver": "ab2"}),
    ("8 AB2 steps", {"steps": 8, "solver": "ab2"}),
]


def main():
    repo = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default=str(repo / "target/release/lumina"))
    p.add_argument("--model", help="model folder (default: the built-in model)")
    p.add_argument("--per-kind", type=int, default=25)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--prompt-seed", type=int, default=13)
    p.add_argument("--size", type=int, help="square side (default: the model's)")
    p.add_argument("-W", "--width", type=int, help="canvas width (with --height)")
    p.add_argument("-H", "--height", type=int, help="canvas height (with --width)")
    p.add_argument("--rows", help="comma-separated row numbers of SETTINGS to run besides "
                                  "row 0, the defaults every ratio is taken against")
    args = p.parse_args()
    if (args.width is None) != (args.height is None):
        p.error("--width and --height go together")
    picked = set(range(len(SETTINGS))) if not args.rows else {0}
    if args.rows:
        try:
            picked |= {int(r) for r in args.rows.split(",")}
        except ValueError:
            p.error(f"--rows takes row numbers 0..{len(SETTINGS) - 1}, got {args.rows!r}")
        if max(picked) >= len(SETTINGS) or min(picked) < 0:
            p.error(f"--rows takes row numbers 0..{len(SETTINGS) - 1}, got {args.rows!r}")

    rows = []
    for i, (label, flags) in enumerate(SETTINGS):
        if i not in picked:
            continue
        if args.size:
            flags = {**flags, "size": args.size}
        if args.width:
            flags = {**flags, "width": args.width, "height": args.height}
        r = evaluate(args.binary, args.model, args.per_kind, args.seeds, args.prompt_seed, flags)
        per_image = r["seconds"] / r["total"]
        rows.append((label, r, per_image))
        print(f"{label:50} {r['accuracy']:.3f} {per_image:.3f} s/image", file=sys.stderr)
    base = rows[0][2]
    total = rows[0][1]["total"]
    print(f"{total} images per row ({args.per_kind} prompts per kind × {args.seeds} seeds, "
          f"prompt seed {args.prompt_seed}), one run:\n")
    print("| setting | accuracy | wrong by fault | s / image | time vs defaults |")
    print("|---|---:|---|---:|---:|")
    for label, r, per_image in rows:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(r.get("faults", {}).items())) or "–"
        print(f"| {label} | {r['accuracy']:.3f} | {faults} | {per_image:.2f} | "
              f"{per_image / base:.2f}× |")


if __name__ == "__main__":
    main()
