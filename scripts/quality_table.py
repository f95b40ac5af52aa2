#!/usr/bin/env python3
"""Judge accuracy of a `shapes` model against sampling settings, as README markdown tables.

Runs `lumina eval --json` once per setting (accuracy vs steps, vs guidance scale, vs solver),
each on the same prompt list and seeds, and prints one markdown table per sweep with the
per-kind accuracies and the wall time of each evaluation.

    python3 scripts/quality_table.py                       # the built-in model
    python3 scripts/quality_table.py --model runs/shapes/model --per-kind 50 --seeds 4
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

KINDS = ["single", "position", "relation", "held-out pair"]
# Model evaluations per solver step (torchdiffeq's rk4 is the 3/8 rule: 4).
NFE_PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "ab2": 1}


def evaluate(binary, model, per_kind, seeds, prompt_seed, overrides):
    cmd = [binary, "eval", "--json", "--per-kind", str(per_kind), "--seeds", str(seeds),
           "--prompt-seed", str(prompt_seed)]
    if model:
        cmd += ["--model", model]
    for flag, value in overrides.items():
        cmd += [f"--{flag}", str(value)]
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    report = json.loads(done.stdout)
    report["seconds"] = time.monotonic() - started
    return report


def same(a, b):
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def row(label, report):
    nfe = report["steps"] * NFE_PER_STEP[report["solver"]]
    kinds = " | ".join(f"{report['per_kind'][k]['accuracy']:.3f}" for k in KINDS)
    return (f"| {label} | {nfe} | **{report['accuracy']:.3f}** | {kinds} | "
            f"{report['seconds']:.0f} s |")


def table(title, column, rows):
    head = f"| {column} | model evals | accuracy | " + " | ".join(KINDS) + " | eval time |"
    rule = "|" + "---|" * (4 + len(KINDS))
    return "\n".join([f"**{title}**", "", head, rule, *rows, ""])


def main():
    repo = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default=str(repo / "target/release/lumina"))
    p.add_argument("--model", help="model folder (default: the built-in model)")
    p.add_argument("--per-kind", type=int, default=25)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--prompt-seed", type=int, default=1)
    p.add_argument("--steps", default="5,10,20,50")
    p.add_argument("--guidance", default="1,2,3,4,6")
    p.add_argument("--solvers", default="euler,midpoint,heun,rk4")
    args = p.parse_args()

    cache = {}

    def run(**overrides):
        # a sweep point equal to the defaults reuses the default evaluation
        key = tuple(sorted((k, str(v)) for k, v in overrides.items() if not same(v, default.get(k))))
        if key not in cache:
            cache[key] = evaluate(args.binary, args.model, args.per_kind, args.seeds,
                                  args.prompt_seed, dict(key))
        return cache[key]

    default = {}
    default = run()
    print(f"Defaults: {default['steps']} steps, {default['solver']}, guidance "
          f"{default['guidance']}, shift {default['shift']}; {default['total']} images "
          f"({args.per_kind} prompts per kind x {args.seeds} seeds, prompt seed "
          f"{args.prompt_seed}).\n")
    print(table("Accuracy vs steps", "steps",
                [row(s, run(steps=s)) for s in args.steps.split(",")]))
    print(table("Accuracy vs guidance scale", "guidance",
                [row(g, run(guidance=g)) for g in args.guidance.split(",")]))
    print(table(f"Accuracy vs solver ({default['steps']} steps)", "solver",
                [row(s, run(solver=s)) for s in args.solvers.split(",")]))


if __name__ == "__main__":
    main()
