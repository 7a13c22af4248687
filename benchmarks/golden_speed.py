"""Speed of the bit-exact golden model: training samples per second on one core.

Trains the default 784-128-10 sparse-DFA configuration (and a few variants) on
MNIST-5k for one epoch, with one BLAS thread, and prints a table; ``--json PATH``
writes the rows. Target (issue 2): >= 3,000 samples/s for 784-128-10.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

from dfa_engine.config import default_config  # noqa: E402
from dfa_engine.data import load_dataset  # noqa: E402
from dfa_engine.sim.golden import GoldenModel  # noqa: E402


def variants(cfg):
    yield "sparse DFA k=1 (default)", cfg
    yield "BP", cfg.with_(methods=("bp",))
    yield "dense DFA", cfg.with_(feedback=cfg.feedback.__class__(kind="dense", values="fixed", seed=1))
    yield "sparse DFA, stochastic update", cfg.with_(rounding_update="stochastic")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args(argv)
    ds = load_dataset("mnist5k")
    cfg = default_config()
    x = cfg.formats.input.from_float(ds.x_train[: args.samples])
    y = ds.y_train[: args.samples]
    rows = []
    print(f"{'variant':34s} {'network':12s} {'samples':>8s} {'seconds':>8s} {'samples/s':>10s}")
    for name, c in variants(cfg):
        model = GoldenModel(c)
        t0 = time.perf_counter()
        model.train_epoch(x, y)
        dt = time.perf_counter() - t0
        rows.append({"variant": name, "network": c.network_name, "samples": len(x),
                     "seconds": dt, "samples_per_second": len(x) / dt})
        print(f"{name:34s} {c.network_name:12s} {len(x):8d} {dt:8.2f} {len(x) / dt:10,.0f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"benchmark": "golden_speed", "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
