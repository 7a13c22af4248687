"""The CNN and RNN engines in Verilator on real data: bit-exactness, cycles and simulation speed.

Cases: ``cnn`` (``examples/cnn_2conv_hybrid.toml``: the 2-conv hybrid, conv1 by sparse
dilated DFA) and ``rnn`` (``examples/rnn_rowwise_dfa.toml``: row-by-row MNIST, DFA through
time), and ``rnn_leaky`` (``examples/rnn_rowwise_leaky.toml``: the leaky cell, DFA through its
eligibility trace), each trained on the first N MNIST-5k training samples (the study's split) and then
inferring the first M test samples, every result and the final parameters checked against
the golden model as ``dfa-engine rtl`` does. Prints a table and, with ``--json PATH``,
writes one row per case: ``{"case", "network", "train_samples", "test_samples", "bit_exact",
"cycles_per_sample", "schedule_cycles_per_sample", "loop_terms_per_sample",
"sim_cycles_per_second", "rtl_test_accuracy", "build_s", "run_s"}`` (an existing file keeps
the rows of the cases not run). ``--config PATH`` runs any CNN or RNN configuration file as
one more case, named after the file.

    python benchmarks/loopnest_rtl.py --train-samples 100 --test-samples 100 --json benchmarks/results/loopnest_rtl.json
    python benchmarks/loopnest_rtl.py --only rnn --config my_rnn.toml
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dfa_engine.config import load_engine_config
from dfa_engine.data import load_dataset
from dfa_engine.gen.generate import loopnest_engine_info
from dfa_engine.sim.verilator_run import train_then_infer

ROOT = Path(__file__).resolve().parent.parent
CASES = {"cnn": "examples/cnn_2conv_hybrid.toml", "rnn": "examples/rnn_rowwise_dfa.toml",
         "rnn_leaky": "examples/rnn_rowwise_leaky.toml"}


def run_case(name, nt, ne, path=None):
    path = path or CASES[name]
    cfg = load_engine_config(ROOT / path)
    ds = load_dataset("mnist5k")
    X = cfg.formats.input.from_float(np.concatenate([ds.x_train[:nt], ds.x_test[:ne]]))
    X = X.reshape(len(X), cfg.steps, cfg.inputs) if hasattr(cfg, "steps") else X.reshape(len(X), *cfg.input_shape)
    Y = np.concatenate([ds.y_train[:nt], ds.y_test[:ne]])
    s = train_then_infer(cfg, X, Y, nt, tag="bench")
    sched = loopnest_engine_info(cfg)["cycles_per_sample"]
    return {"case": name, "config": str(path), "network": cfg.network_name, "train_samples": nt, "test_samples": ne,
            "bit_exact": s["bit_exact"],
            "cycles_per_sample": s["cycles_per_train_sample"], "schedule_cycles_per_sample": sched["train_sample"],
            "loop_terms_per_sample": sched["terms_per_sample"],
            "sim_cycles_per_second": s["sim_cycles_per_second"], "rtl_test_accuracy": s["test_accuracy"],
            "build_s": round(s["build_seconds"], 1), "run_s": round(s["wall_seconds_total"], 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=sorted(CASES))
    ap.add_argument("--train-samples", type=int, default=100)
    ap.add_argument("--test-samples", type=int, default=100)
    ap.add_argument("--config", action="append", default=[], help="a CNN or RNN configuration file (repeatable)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    names = args.only or ([] if args.config else list(CASES))
    rows = [run_case(name, args.train_samples, args.test_samples) for name in names]
    rows += [run_case(Path(p).stem, args.train_samples, args.test_samples, Path(p).resolve()) for p in args.config]
    print(f"{'case':<9} {'network':<28} {'train':>5} {'test':>5} {'bit-exact':>9} {'cycles/sample':>13} "
          f"{'schedule':>9} {'loop terms':>10} {'sim cycles/s':>12} {'build s':>7} {'run s':>6}")
    for r in rows:
        print(f"{r['case']:<9} {r['network']:<28} {r['train_samples']:>5} {r['test_samples']:>5} "
              f"{'yes' if r['bit_exact'] else 'NO':>9} {r['cycles_per_sample']:>13,.0f} "
              f"{r['schedule_cycles_per_sample']:>9,} {r['loop_terms_per_sample']:>10,} "
              f"{r['sim_cycles_per_second']:>12,.0f} {r['build_s']:>7} {r['run_s']:>6}")
    if args.json:
        # an existing file keeps the rows of the cases not run this time
        path = Path(args.json)
        old = json.loads(path.read_text()) if path.exists() else []
        ran = {r["case"] for r in rows}
        merged = [r for r in old if r["case"] not in ran] + rows
        merged.sort(key=lambda r: list(CASES).index(r["case"]) if r["case"] in CASES else len(CASES))
        path.write_text(json.dumps(merged, indent=2) + "\n")
    return 0 if all(r["bit_exact"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
