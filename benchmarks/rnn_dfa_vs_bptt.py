"""Cycles per sequence of DFA through time against BPTT on the RNN engine's datapath.

The row-by-row MNIST example (``examples/rnn_rowwise_dfa.toml``: ``I = 28``, ``H = 128``,
``T = 28``) with DFA (dense feedback) and with BPTT (section 13.8 of ``docs/numerics.md``),
each with the example's 4-step window and with every step (``window = all``: full BPTT).
Each engine is generated and trained in Verilator on MNIST-5k sequences, checked against
its golden model (bit-exact), and its cycles per training sequence are measured between
consecutive results, next to the schedule's count and the passes that differ (DFA's
projection ``B e``: ``H C`` terms; BPTT's ``W_2^T delta_2`` and ``K - 1`` steps of
``W_h^T delta``: ``H C + (K - 1) H^2`` terms, strictly sequential in time). Prints a table
and, with ``--json PATH``, writes one row per (cell, method, window):
``{"cell", "method", "window", "cycles_per_sequence", "schedule_cycles", "backward_terms",
"ratio_to_dfa", "bit_exact"}`` (an existing file keeps the other cell's rows). ``--cell leaky``
uses ``examples/rnn_rowwise_leaky.toml`` (DFA through the eligibility trace, whose ``TRACE``
pass counts as backward terms; BPTT through the leak, section 13.9).

    python benchmarks/rnn_dfa_vs_bptt.py --sequences 20 --json benchmarks/results/rnn_dfa_vs_bptt.json
    python benchmarks/rnn_dfa_vs_bptt.py --cell leaky --sequences 20 --json benchmarks/results/rnn_dfa_vs_bptt.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dfa_engine.data import load_dataset
from dfa_engine.hdl.rnn_engine import rnn_cycles, rnn_schedule
from dfa_engine.rnn_config import load_rnn_config
from dfa_engine.sim.verilator_run import run_training

ROOT = Path(__file__).resolve().parent.parent


def run(method, window, n, base):
    cfg = base.with_(method=method, window=window)
    ds = load_dataset("mnist5k")
    X = cfg.formats.input.from_float(ds.x_train[:n]).reshape(n, cfg.steps, cfg.inputs)
    Y = ds.y_train[:n]
    s = run_training(cfg, X, Y, tag=f"{cfg.cell}_{method}_{window}", max_samples=max(n, 8))
    cycles = [r["cycle"] for r in s["results"]]
    fwd, bwd = rnn_schedule(cfg)
    backward = sum(p.cycles for p in bwd if p.kind in ("PROJ", "TRACE", "BPTO", "BPTH"))
    return {"cell": cfg.cell, "method": method, "window": window, "sequences": n,
            "cycles_per_sequence": float(np.mean(np.diff(cycles))),
            "schedule_cycles": rnn_cycles(cfg)["train_sample"], "backward_terms": backward,
            "bit_exact": s["mismatch"] is None and bool(s.get("params_equal")),
            "sim_cycles_per_second": s["sim_cycles_per_second"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequences", type=int, default=20)
    ap.add_argument("--cell", choices=("elman", "leaky"), default="elman")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    base = load_rnn_config(ROOT / ("examples/rnn_rowwise_dfa.toml" if args.cell == "elman"
                                   else "examples/rnn_rowwise_leaky.toml"))
    rows = []
    for window in sorted({min(4, base.steps), base.steps}):
        dfa = run("dfa", window, args.sequences, base)
        bptt = run("bptt", window, args.sequences, base)
        for r in (dfa, bptt):
            r["ratio_to_dfa"] = r["cycles_per_sequence"] / dfa["cycles_per_sequence"]
            rows.append(r)
    print(f"{'cell':<6} {'method':<6} {'window':>6} {'cycles/sequence':>15} {'schedule':>9} {'backward terms':>14} "
          f"{'x DFA':>6} {'bit-exact':>9}")
    for r in rows:
        print(f"{r['cell']:<6} {r['method']:<6} {r['window']:>6} {r['cycles_per_sequence']:>15,.0f} "
              f"{r['schedule_cycles']:>9,} {r['backward_terms']:>14,} {r['ratio_to_dfa']:>6.3f} "
              f"{'yes' if r['bit_exact'] else 'NO':>9}")
    if args.json:
        path = Path(args.json)
        old = [r for r in (json.loads(path.read_text()) if path.exists() else [])
               if r.get("cell", "elman") != args.cell]
        path.write_text(json.dumps(old + rows, indent=2) + "\n")
    return 0 if all(r["bit_exact"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
