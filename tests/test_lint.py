"""verilator --lint-only -Wall on the generated Verilog: clean with the listed waivers only."""

import re
import subprocess
from pathlib import Path

from dfa_engine.config import config_from_dict
from dfa_engine.gen.generate import generate
from dfa_engine.sim.verilator_run import verilator_bin_dir

WAIVERS = Path(__file__).resolve().parents[1] / "gen" / "lint_waivers.vlt"


def _lint(args, cwd):
    return subprocess.run([str(verilator_bin_dir() / "verilator"), "--lint-only", "-Wall", *args,
                           "--top-module", "dfa_engine_top"], capture_output=True, text=True, cwd=cwd)


def test_lint_clean_with_waivers(tmp_path):
    cfg = config_from_dict({"network": {"layers": [12, 8, 6, 4], "methods": ["dfa", "bp"]},
                            "feedback": {"k": 2}, "hardware": {"lanes": 4}})
    generate(cfg, tmp_path)
    top = str(tmp_path / "dfa_engine_top.v")
    r = _lint([str(WAIVERS), top], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "%Warning" not in r.stderr and "%Error" not in r.stderr
    # Without waivers, only the waived categories appear (a new category must be looked at).
    raw = _lint([top], tmp_path)
    rules = set(re.findall(r"%Warning-([A-Z]+)", raw.stderr))
    waived = set(re.findall(r"lint_off -rule ([A-Z]+)", WAIVERS.read_text()))
    assert rules and rules <= waived, rules - waived
