"""One epoch of the generated engine in Verilator: speed, cycles and accuracy against the golden model.

Default: the built-in configuration (784-128-10, sparse DFA, P = 16), 4,000 MNIST-5k
training samples, then the 1,000 test samples in inference. Prints a table and, with
``--json PATH``, writes ``{"cycles_per_sample", "ideal_cycles_per_sample",
"sim_cycles_per_second", "rtl_test_accuracy", "golden_test_accuracy", "bit_exact", ...}``.
``--schedule one_pass|two_pass`` overrides the configuration's schedule (the default is
one-pass). ``ideal`` is ``(forward + update MACs) / P``, two passes over the weights;
``one_pass_bound`` is ``weights / P``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from dfa_engine.config import load_config
from dfa_engine.data import load_dataset
from dfa_engine.gen.generate import estimate_cycles
from dfa_engine.sim.golden import GoldenModel
from dfa_engine.sim.verilator_run import train_then_infer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?")
    parser.add_argument("--train-samples", type=int, default=4000)
    parser.add_argument("--test-samples", type=int, default=1000)
    parser.add_argument("--schedule", choices=["one_pass", "two_pass"],
                        help="override the configuration's hardware.schedule")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    if args.schedule:
        cfg = cfg.with_(schedule=args.schedule)
    ds = load_dataset("mnist5k")
    nt, ne = args.train_samples, args.test_samples
    X = cfg.formats.input.from_float(np.concatenate([ds.x_train[:nt], ds.x_test[:ne]]))
    Y = np.concatenate([ds.y_train[:nt], ds.y_test[:ne]])
    s = train_then_infer(cfg, X, Y, nt, tag="bench")
    per_train, build_s, rtl_acc = s["cycles_per_train_sample"], s["build_seconds"], s["test_accuracy"]
    golden = GoldenModel(cfg)
    golden.train_epoch(X[:nt], Y[:nt])
    golden_acc = golden.evaluate(X[nt:], Y[nt:])
    est = estimate_cycles(cfg)
    row = {
        "config": cfg.network_name, "lanes": cfg.lanes, "methods": list(cfg.methods), "schedule": cfg.schedule,
        "feedback": f"{cfg.feedback.kind} k={cfg.feedback.k} {cfg.feedback.values} {cfg.feedback.storage}",
        "train_samples": nt, "test_samples": ne,
        "cycles_per_sample": per_train, "ideal_cycles_per_sample": est["ideal_train_sample"],
        "ratio_to_ideal": per_train / est["ideal_train_sample"],
        "estimated_cycles_per_sample": est["train_sample"],
        "one_pass_bound": est["one_pass_bound"], "ratio_to_one_pass_bound": per_train / est["one_pass_bound"],
        "sim_cycles": s["cycles"], "sim_seconds": s["wall_seconds"],
        "sim_cycles_per_second": s["sim_cycles_per_second"], "build_seconds": build_s,
        "rtl_test_accuracy": rtl_acc, "golden_test_accuracy": golden_acc,
        "bit_exact": s["mismatch"] is None and bool(s.get("params_equal")), "first_difference": s["mismatch"],
    }
    for k, v in row.items():
        print(f"{k:30s} {v:,.3f}" if isinstance(v, float) else f"{k:30s} {v}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(row, fh, indent=2)


if __name__ == "__main__":
    main()
