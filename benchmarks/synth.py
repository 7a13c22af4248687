"""Full open-toolchain builds (Yosys, nextpnr, icepack/ecppack; YoWASP) of the example configurations.

Cases: ``mnist_up5k`` (``examples/mnist_up5k.toml`` on the iCEBreaker at 30 MHz),
``mnist_ecp5`` (``examples/mnist_ecp5.toml`` on the ULX3S-85F at 100 MHz), one small
configuration per family (``small_ice40``, ``small_ecp5``: 16-8-4), and the CNN engine of
``examples/cnn_2conv_hybrid.toml`` on the ULX3S-85F at 50 MHz (``cnn_2conv_ecp5``), and the RNN
engine of ``examples/rnn_rowwise_dfa.toml`` there at 50 MHz (``rnn_rowwise_ecp5``; the leaky
cell's ``examples/rnn_rowwise_leaky.toml``: ``rnn_leaky_ecp5``). Each case goes
through ``gen/build.py`` exactly as ``dfa-engine build`` does: estimate, fit check, build.
A case that cannot fit is recorded with the one-line reason and no synthesis is run.
Builds run one after another (each tool in the foreground). Prints a table and, with
``--json PATH``, writes the reports (an existing file is updated case by case, so cases
can be run separately). ``--force`` also builds a case the check rejects (as
``CASE_forced``), to record what the tools make of it.

    python benchmarks/synth.py --json benchmarks/results/synth.json --only mnist_ecp5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from dfa_engine.config import config_from_dict, load_engine_config
from dfa_engine.gen.build import FitError, build, check_fit, estimate
from dfa_engine.hdl.family import engine_family

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "mnist_up5k": ("examples/mnist_up5k.toml", "icebreaker", 30.0),
    "mnist_ecp5": ("examples/mnist_ecp5.toml", "ulx3s-85f", 100.0),
    "small_ice40": ({"network": {"layers": [16, 8, 4]}, "hardware": {"lanes": 1}}, "icebreaker", 24.0),
    "small_ecp5": ({"network": {"layers": [16, 8, 4]}, "hardware": {"lanes": 2}}, "ulx3s-85f", 100.0),
    # the CNN engine (hdl/cnn_engine.py, one MAC a cycle) of the 2-conv hybrid
    "cnn_2conv_ecp5": ("examples/cnn_2conv_hybrid.toml", "ulx3s-85f", 50.0),
    # the RNN engine (hdl/rnn_engine.py) of the row-by-row MNIST example
    "rnn_rowwise_ecp5": ("examples/rnn_rowwise_dfa.toml", "ulx3s-85f", 50.0),
    # the same with the leaky cell and DFA through its eligibility trace
    "rnn_leaky_ecp5": ("examples/rnn_rowwise_leaky.toml", "ulx3s-85f", 50.0),
}
#: what the JSON keeps of a report (the rest is in the build folder's report.json)
KEEP = ("board", "device", "network", "lanes", "status", "failed_step", "error", "dsp_inference",
        "requested_mhz", "target_mhz", "fmax_mhz", "timing_met", "critical_path", "utilization",
        "cycles_per_sample", "samples_per_second", "throughput_clock_mhz", "macs_per_sample", "mac_per_second",
        "peak_mac_per_second", "mac_ratio_to_peak", "pnr_seed", "times_s")


def _config(source):
    return config_from_dict(source) if isinstance(source, dict) else load_engine_config(ROOT / source)


def run_case(name, out_root, timeout, force=False, seed=None):
    source, board, freq = CASES[name]
    cfg = _config(source)
    entry = {"config": source if isinstance(source, str) else cfg.to_dict(), "board": board,
             "network": list(cfg.layers) if engine_family(cfg).name == "mlp" else cfg.network_name, "lanes": cfg.lanes,
             "requested_mhz": freq}
    t0 = time.perf_counter()
    est = estimate(cfg, board, freq)
    entry["estimate"] = {k: v["estimate"] for k, v in est["resources"].items()}
    entry["estimate"].update(samples_per_second=est["samples_per_second"], mac_ratio_to_peak=est["mac_ratio_to_peak"])
    try:
        check_fit(est)
        entry["fit_check"] = "ok"
    except FitError as exc:
        entry["fit_check"] = str(exc)
        print(f"{name}: does not fit: {exc}", flush=True)
        if not force:
            entry.update(status="does_not_fit", error=str(exc), resource=exc.resource,
                         times_s={"total": round(time.perf_counter() - t0, 1)})
            return entry
    rep = build(cfg, board, Path(out_root) / name, freq_mhz=freq, timeout=timeout, check=False, seed=seed,
                echo=lambda s: print(s, flush=True))
    entry.update({k: rep[k] for k in KEEP})
    return entry


def table(results):
    lines = [f"{'case':<12} {'board':<11} {'network':<11} {'P':>3} {'status':<13} {'LUT':>13} {'FF':>13} "
             f"{'DSP':>7} {'BRAM':>7} {'fmax/target MHz':>16} {'samples/s':>9} {'MAC/peak':>8} {'time':>6}"]
    for name, r in results.items():
        u = r.get("utilization", {})

        def cell(k):
            if k in u:
                return f"{u[k]['used']:,}/{u[k]['available']:,}"
            return f"~{r['estimate'][k]:,}" if k in r.get("estimate", {}) else "-"
        fmax = f"{r['fmax_mhz']:.1f}/{r['target_mhz']:.0f}" if r.get("fmax_mhz") else "-"
        sps = f"{r['samples_per_second']:,.0f}" if r.get("samples_per_second") else "-"
        ratio = f"{r['mac_ratio_to_peak']:.1%}" if r.get("mac_ratio_to_peak") else "-"
        lines.append(f"{name:<12} {r['board']:<11} {r['network'] if isinstance(r['network'], str) else '-'.join(map(str, r['network'])):<11} {r['lanes']:>3} "
                     f"{r['status']:<13} {cell('LUT'):>13} {cell('FF'):>13} {cell('DSP'):>7} {cell('BRAM'):>7} "
                     f"{fmax:>16} {sps:>9} {ratio:>8} {r['times_s']['total']:>5.0f}s")
        if r.get("error"):
            lines.append(f"{'':<12} {r['error']}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write (update) the results here")
    ap.add_argument("--only", action="append", choices=sorted(CASES), help="run only this case (repeatable)")
    ap.add_argument("--out", default=str(ROOT / "build" / "synth"), help="build folders (default build/synth/CASE)")
    ap.add_argument("--timeout", type=float, default=3600, help="limit per tool run, seconds (default 3600)")
    ap.add_argument("--force", action="store_true",
                    help="build even a case the fit check rejects (stored as CASE_forced), to see what the tools say")
    ap.add_argument("--seed", type=int, help="nextpnr placement seed for every case run (default: nextpnr's own)")
    ap.add_argument("--commit", help="the engine's commit, to record (default: git rev-parse HEAD)")
    args = ap.parse_args(argv)
    results = {}
    if args.json and Path(args.json).exists():
        results = json.loads(Path(args.json).read_text()).get("cases", {})
    # the engine being built: taken now, not when a (long) build ends
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                           capture_output=True, text=True).stdout.strip()
    for name in args.only or list(CASES):
        key = name
        results[key] = run_case(name, args.out, args.timeout, seed=args.seed)
        if args.force and results[key]["status"] == "does_not_fit":
            key = f"{name}_forced"
            results[key] = run_case(name, args.out, args.timeout, force=True, seed=args.seed)
        if args.json:
            results[key]["engine_commit"] = commit
            if key != name:
                results[name]["engine_commit"] = commit
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"cases": results}, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
