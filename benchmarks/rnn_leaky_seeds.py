"""Seed spread of the RNN study's leaky-cell entries on row-by-row MNIST-5k.

``dfa-engine study --rnn`` runs one seed per entry; on MNIST-5k its curves move by several
points between epochs, so a gap between two entries needs more than one run. This trains
the named entries of :data:`dfa_engine.study_rnn.ENTRIES` (their tuned learning rate and
feedback scale; ``NAME@LR`` overrides the rate) for every initial-weight seed given, with the
study's schedule (20 epochs, batch 16, clip 1.0, float32), and reports per entry the final
and the best-epoch test accuracy, mean and range over the seeds. The feedback matrix is the
same for every seed (feedback seed 1), as in the engine.

    python benchmarks/rnn_leaky_seeds.py --seeds 0,1,2,3,4 --json benchmarks/results/rnn_leaky_seeds.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from dfa_engine.rnn import load_task  # noqa: E402
from dfa_engine.study_rnn import ENTRIES, config, seed_spread, train  # noqa: E402

DEFAULT = "bptt,bptt_leaky,dfa_w4,dfa_leaky,dfa_trace,dfa_sparse_trace,wout_leaky,wout_trace"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", default=DEFAULT)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    X, Y, Xt, Yt, meta = load_task("mnist5k")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for spec in args.entries.split(","):
        entry, _, lr = spec.partition("@")
        if entry not in ENTRIES:
            raise SystemExit(f"--entries: unknown entry {entry!r}; known: {', '.join(ENTRIES)}")
        curves = []
        t0 = time.perf_counter()
        for seed in seeds:
            cfg = config("mnist5k", entry, meta, lr=float(lr) if lr else None).with_(seed=seed)
            curves.append(train(cfg, (X, Y, Xt, Yt), args.epochs)[1])
        rows.append({"entry": spec, "label": ENTRIES[entry][0], "lr": cfg.lr, "seeds": seeds, **seed_spread(curves),
                     "seconds": round(time.perf_counter() - t0, 1)})
        r = rows[-1]
        finals, bests = r["final"], r["best_epoch"]
        print(f"{spec:<18} lr {r['lr']:<5g} final {100 * r['final_mean']:5.1f} ({100 * min(finals):.1f}-"
              f"{100 * max(finals):.1f})  best epoch {100 * r['best_epoch_mean']:5.1f} ({100 * min(bests):.1f}-"
              f"{100 * max(bests):.1f})  {r['seconds']:.0f} s", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"task": "mnist5k", "epochs": args.epochs, "rows": rows}, indent=1)
                                   + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
