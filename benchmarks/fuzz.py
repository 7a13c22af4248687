"""Randomized configurations: build each in Verilator, train it on real digits, check it bit-exact.

``--count N --seed S``: case ``i`` has its own seed (``dfa_engine.sim.fuzz.case_seed(S, i)``,
printed); from it come a random valid configuration (``dfa_engine.sim.fuzz``), the idle and
backpressure rates and a window of ``--samples`` sklearn digits. Each case is trained in
Verilator with the golden model checking every result, then every parameter and counter
(the checks of ``tests/test_rtl_verilator.py``). Prints one row per case; ``--json PATH``
writes ``{"seed", "count", "samples", "passed", "failed", "failures": [{"case_seed",
"config", "reason"}], "cases": [...], "total_seconds", "git_head", "uncommitted_sources"}``.
``--replay CASE_SEED`` reruns exactly one case (from a failure's ``case_seed``). The build
of a case that passed is deleted (about 200 MB each) unless ``--keep-builds``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dfa_engine.sim.fuzz import case_seed, run_case

HEADER = f"{'#':>3} {'case seed':>10}  {'configuration':<86} {'idle':>5} {'bp':>5} {'build s':>7} {'run s':>6} {'sat':>6}  result"


def _row(i, case) -> str:
    result = "pass" if case["passed"] else f"FAIL {case['reason']}"
    return (f"{i:>3} {case['case_seed']:>10}  {case['summary'][:86]:<86} {case['idle']:>5.2f} {case['backpressure']:>5.2f} "
            f"{case['build_seconds']:>7.1f} {case['run_seconds']:>6.1f} {case['saturation_events'] or 0:>6}  {result}")


def _provenance() -> dict:
    """The commit and the uncommitted source files the run builds from (the build keys hash
    the working tree's sources, so an edit in progress is part of what is tested)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
             if line[3:].endswith(".py")]
    return {"git_head": git("rev-parse", "--short", "HEAD"), "uncommitted_sources": dirty}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50, help="number of cases (default 50)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the run (default 1)")
    parser.add_argument("--samples", type=int, default=200, help="digits trained per case (default 200)")
    parser.add_argument("--replay", type=int, metavar="CASE_SEED", help="rerun the one case with this seed")
    parser.add_argument("--keep-builds", action="store_true", help="keep the build directories of passed cases")
    parser.add_argument("--json", help="write the summary here")
    args = parser.parse_args(argv)
    if args.replay is not None:
        seeds = [args.replay]
    else:
        seeds = [case_seed(args.seed, i) for i in range(args.count)]
    provenance = _provenance()
    t0 = time.perf_counter()
    print(HEADER, flush=True)
    cases = []
    for i, s in enumerate(seeds):
        case = run_case(s, samples=args.samples, keep_build=args.keep_builds or args.replay is not None)
        cases.append(case)
        print(_row(i, case), flush=True)
    total = time.perf_counter() - t0
    failures = [{"case_seed": c["case_seed"], "config": c["config"], "reason": c["reason"]}
                for c in cases if not c["passed"]]
    passed = len(cases) - len(failures)
    print(f"{passed}/{len(cases)} passed in {total:.0f} s (seed {args.seed if args.replay is None else '-'}, "
          f"{args.samples} samples a case)", flush=True)
    for f in failures:
        print(f"replay: python benchmarks/fuzz.py --replay {f['case_seed']} --samples {args.samples}  # {f['reason']}")
    if args.json:
        out = {"seed": args.seed if args.replay is None else None, "replay": args.replay, "count": len(cases),
               "samples": args.samples, "passed": passed, "failed": len(failures), "failures": failures,
               "cases": cases, "total_seconds": total, **provenance}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
