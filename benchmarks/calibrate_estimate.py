"""Calibrate the LUT/FF model of ``dfa-engine build``'s estimate on real synthesis runs.

For each configuration of a small grid (per FPGA family) this runs Yosys and nextpnr's
packer (``gen/build.py``, ``stop_after="pack"``: the utilisation after packing, no
placement), subtracts what the estimate already counts from the memory map (memories in
flip-flops, ROMs, LUT RAM, read multiplexers of block RAM split in depth), and fits ``c0 + c_lane * lanes + c_class * classes`` by least squares to
the rest. Prints the runs, the fit and its residuals, and writes them as JSON; paste the
coefficients into ``CALIBRATION`` in ``gen/build.py``. One synthesis at a time (a few
minutes in all on two cores).

    python benchmarks/calibrate_estimate.py --json benchmarks/results/estimate_calibration.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dfa_engine.config import config_from_dict
from dfa_engine.gen.build import BOARDS, build

GRID = {
    "ice40": ("icebreaker", [([16, 8, 4], 1), ([16, 8, 4], 2), ([16, 8, 4], 4),
                             ([64, 32, 10], 2), ([64, 32, 10], 4), ([64, 32, 10], 8)]),
    "ecp5": ("ulx3s-85f", [([16, 8, 4], 2), ([64, 32, 10], 4), ([64, 32, 10], 8),
                           ([64, 32, 10], 16), ([64, 32, 10], 32)]),
}
#: quantity -> (resource in the report, what the estimate adds on top of the linear part)
TARGETS = {
    "ice40": {"lut": ("LUT", lambda m: m["ff_bits"] + m["rom_bits"] // 8 + m["bram_mux_luts"]),
              "ff": ("FF", lambda m: m["ff_bits"]),
              "lc": ("LC", lambda m: m["ff_bits"] + m["rom_bits"] // 8 + m["bram_mux_luts"])},
    "ecp5": {"lut": ("LUT", lambda m: m["ff_bits"] + m["rom_bits"] // 8 + m["bram_mux_luts"]
                     + 2 * m["lutram_cells"]),
             "ff": ("FF", lambda m: m["ff_bits"])},
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the runs and the fit here")
    ap.add_argument("--family", choices=sorted(GRID), action="append", help="only this family (repeatable)")
    ap.add_argument("--commit", help="the engine's commit, to record (default: git rev-parse HEAD here)")
    args = ap.parse_args(argv)
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                           text=True).stdout.strip()
    result = {"engine_commit": commit, "families": {}}
    for family in args.family or sorted(GRID):
        board, grid = GRID[family]
        runs = []
        for layers, lanes in grid:
            cfg = config_from_dict({"network": {"layers": layers}, "hardware": {"lanes": lanes}})
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                rep = build(cfg, board, Path(tmp) / "b", stop_after="pack", check=False, echo=lambda *_: None)
                dt = time.perf_counter() - t0
            util = {k: v["used"] for k, v in rep["utilization"].items()}
            runs.append({"layers": layers, "lanes": lanes, "classes": layers[-1], "status": rep["status"],
                         "utilization": util, "memory_logic": rep["estimate"]["memory_logic"],
                         "seconds": round(dt, 1)})
            print(f"{family} {'-'.join(map(str, layers)):>10} P={lanes:<3} {rep['status']:<8} "
                  + " ".join(f"{k}={v}" for k, v in util.items()) + f"  ({dt:.0f} s)", flush=True)
        fits = {}
        X = np.array([[1.0, r["lanes"], r["classes"]] for r in runs])
        for q, (res, extra) in TARGETS[family].items():
            y = np.array([r["utilization"][res] - extra(r["memory_logic"]) for r in runs], dtype=float)
            coef, *_ = np.linalg.lstsq(X, y, rcond=None)
            pred = X @ coef + np.array([extra(r["memory_logic"]) for r in runs])
            actual = np.array([r["utilization"][res] for r in runs])
            resid = (pred - actual) / actual
            fits[q] = {"coefficients": [round(float(c), 1) for c in coef],
                       "relative_errors": [round(float(e), 4) for e in resid],
                       "max_abs_relative_error": round(float(np.max(np.abs(resid))), 4)}
            print(f"  {q}: c0 {coef[0]:.1f}, per lane {coef[1]:.1f}, per class {coef[2]:.1f}; "
                  f"max |error| {np.max(np.abs(resid)):.1%}")
        result["families"][family] = {"board": board, "runs": runs, "fit": fits}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
