"""DFA against BP on the same hardware: cycles per training sample by depth and lanes.

For MLPs of 2, 3, 4 and 6 weight layers (widths chosen so the weights, 16 bits each, fill
about 3.2 Mbit: most of an LFE5U-85F's block RAM) and P in {4, 16, 64} lanes, each network
is generated three times with the same lanes and memories, in each schedule
(``hardware.schedule``: two-pass, or one-pass with each update fused into the next
sample's forward pass): every hidden layer by BP, every
hidden layer by sparse DFA (k = 1, +-1), and hybrid (the top hidden layer by BP, the
others by DFA). Cycles per training sample are simulated in Verilator (a few samples each:
the schedule does not depend on the data) or, with ``--estimate``, taken from the
generator's cycle model (``gen/generate.py: estimate_cycles``, which the simulated rows
check). The one-pass bound is ``weights / P``: one visit of every weight per sample.

Prints a table and writes JSON rows ``{"layers", "lanes", "method", "cycles_per_sample",
"bound_cycles_per_sample", "ratio_to_bound", "source", ...}`` (``--json PATH``) and a plot
of cycles per sample against depth (``--plot PATH``).

    .venv/bin/python benchmarks/dfa_vs_bp.py --json benchmarks/results/dfa_vs_bp.json \\
        --plot docs/img/dfa_vs_bp.png [--lanes 16] [--estimate]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from dfa_engine.config import config_from_dict
from dfa_engine.gen.generate import estimate_cycles

# Two families, each filling about the same weight memory: MNIST-sized inputs (the first
# layer holds most of the weights) and 8x8-digit inputs (the hidden layers hold most).
# BP's extra work is the transposed pass over every weight matrix but the first, so DFA's
# advantage on the same hardware is about 1 + (weights above layer 1) / (all weights).
FAMILIES = {
    "mnist": {
        2: [784, 256, 10],
        3: [784, 192, 192, 10],
        4: [784, 160, 160, 160, 10],
        6: [784, 128, 128, 128, 128, 128, 10],
    },
    "digits": {
        2: [64, 2048, 10],
        3: [64, 384, 384, 10],
        4: [64, 288, 288, 288, 10],
        6: [64, 200, 200, 200, 200, 200, 10],
    },
}
NETWORKS = FAMILIES["mnist"]


def methods_for(kind: str, hidden: int) -> list:
    if kind == "bp":
        return ["bp"] * hidden
    if kind == "dfa":
        return ["dfa"] * hidden
    return ["dfa"] * (hidden - 1) + ["bp"]      # hybrid: BP for the top hidden layer


def config(layers: list, lanes: int, kind: str, schedule: str = "one_pass"):
    return config_from_dict({
        "network": {"layers": layers, "methods": methods_for(kind, len(layers) - 2), "activation": "hardtanh"},
        "feedback": {"kind": "sparse", "k": 1, "values": "pm1", "storage": "table"},
        "hardware": {"lanes": lanes, "schedule": schedule},
    })


def simulate(cfg, samples: int = 3) -> float:
    """Mean cycles between consecutive training results in Verilator (no idle, no backpressure)."""
    from dfa_engine.sim.verilator_run import run_training

    rng = np.random.default_rng(0)
    f = cfg.formats
    X = rng.integers(f.input.min_raw, f.input.max_raw + 1, size=(samples, cfg.layers[0]))
    Y = rng.integers(0, cfg.n_classes, size=samples)
    s = run_training(cfg, X, Y, max_samples=samples, tag="dfa_vs_bp", check=True)
    if s["mismatch"] is not None or not s.get("params_equal", False):
        raise RuntimeError(f"not bit-exact: {s['mismatch']}")
    cycles = [r["cycle"] for r in s["results"]]
    return float(np.mean(np.diff(cycles)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json")
    parser.add_argument("--plot")
    parser.add_argument("--lanes", type=int, nargs="*", default=[4, 16, 64])
    parser.add_argument("--depths", type=int, nargs="*", default=sorted(NETWORKS))
    parser.add_argument("--families", nargs="*", default=sorted(FAMILIES), choices=sorted(FAMILIES))
    parser.add_argument("--schedules", nargs="*", default=["one_pass", "two_pass"],
                        choices=["one_pass", "two_pass"])
    parser.add_argument("--estimate", action="store_true",
                        help="use the generator's cycle model instead of simulating")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'family':>7} {'schedule':>9} {'layers':>6} {'P':>4} {'method':>7} {'cycles/sample':>14} {'bound':>10} {'ratio':>6} "
          f"{'BP/this':>8} {'source':>9}")
    for family, schedule, depth in [(fa, sc, d) for fa in args.families for sc in args.schedules
                                    for d in args.depths]:
        layers = FAMILIES[family][depth]
        weights = sum(a * b for a, b in zip(layers[:-1], layers[1:]))
        for lanes in args.lanes:
            per_method = {}
            for kind in ("bp", "hybrid", "dfa"):
                cfg = config(layers, lanes, kind, schedule)
                est = estimate_cycles(cfg)["train_sample"]
                t0 = time.perf_counter()
                if args.estimate:
                    cycles, source = float(est), "estimate"
                else:
                    cycles, source = simulate(cfg), "verilator"
                bound = weights / lanes
                per_method[kind] = cycles
                rows.append({"family": family, "layers": depth, "network": layers, "lanes": lanes, "method": kind, "schedule": schedule,
                             "cycles_per_sample": cycles, "bound_cycles_per_sample": bound,
                             "ratio_to_bound": cycles / bound, "estimated_cycles_per_sample": est,
                             "source": source, "seconds": time.perf_counter() - t0})
            for row in rows[-3:]:
                row["bp_over_this"] = per_method["bp"] / row["cycles_per_sample"]
                print(f"{family:>7} {schedule:>9} {depth:>6} {lanes:>4} {row['method']:>7} {row['cycles_per_sample']:>14,.0f} "
                      f"{row['bound_cycles_per_sample']:>10,.0f} {row['ratio_to_bound']:>6.2f} "
                      f"{row['bp_over_this']:>8.2f} {row['source']:>9}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(args.families), figsize=(6 * len(args.families), 4), squeeze=False)
        plot_lanes = 16 if 16 in args.lanes else args.lanes[0]
        for ax, family in zip(axes[0], args.families):
            fam = [r for r in rows if r["family"] == family and r["lanes"] == plot_lanes]
            for schedule in args.schedules:
                for kind, marker in (("bp", "o"), ("hybrid", "s"), ("dfa", "^")):
                    pts = [(r["layers"], r["cycles_per_sample"]) for r in fam
                           if r["method"] == kind and r["schedule"] == schedule]
                    if pts:
                        ax.plot(*zip(*pts), marker=marker, linestyle="-" if schedule == "one_pass" else ":",
                                label=f"{kind}, {schedule.replace('_', '-')}")
            pts = [(r["layers"], r["bound_cycles_per_sample"]) for r in fam
                   if r["method"] == "dfa" and r["schedule"] == args.schedules[0]]
            ax.plot(*zip(*pts), "-", color="gray", lw=3, alpha=0.4, label="one-pass bound (weights / P)")
            ax.set_title(f"{family} inputs, P = {plot_lanes}")
            ax.set_xlabel("weight layers")
            ax.set_ylabel("cycles per training sample")
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
