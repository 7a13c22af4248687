"""dfa-engine generate: stable Verilog, engine.json, and fail-fast on infeasible configurations."""

import json
import re
import subprocess
import sys

import pytest

from dfa_engine.config import config_from_dict
from dfa_engine.gen.generate import estimate_cycles

SMALL = '[network]\nlayers = [12, 8, 4]\nmethods = ["dfa"]\n[feedback]\nk = 2\n[hardware]\nlanes = 4\n'


def _generate(tmp_path, name, text):
    cfg_path = tmp_path / f"{name}.toml"
    cfg_path.write_text(text)
    out = tmp_path / name
    r = subprocess.run([sys.executable, "-m", "dfa_engine.cli", "generate", str(cfg_path), "-o", str(out)],
                       capture_output=True, text=True)
    return r, out


def test_generate_is_stable_and_path_free(tmp_path):
    r1, out1 = _generate(tmp_path, "a", SMALL)
    r2, out2 = _generate(tmp_path, "b", SMALL)
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr
    v1 = (out1 / "dfa_engine_top.v").read_bytes()
    assert v1 == (out2 / "dfa_engine_top.v").read_bytes()
    assert b"module dfa_engine_top" in v1
    for forbidden in (str(tmp_path).encode(), b"/work/", b"/home/", b"/root/", b"/tmp/"):
        assert forbidden not in v1
    info = json.loads((out1 / "engine.json").read_text())
    assert info["network"] == [12, 8, 4] and info["lanes"] == 4
    assert set(info["ports"]) == {"sample", "result", "host_req", "host_resp"}
    assert info["memory_map"]["counters"][0] == "samples_trained"
    assert info["cycles_per_sample"]["train_sample"] > info["cycles_per_sample"]["ideal_train_sample"]
    assert (out1 / "engine.json").read_bytes() == (out2 / "engine.json").read_bytes()


def test_generate_rejects_infeasible_configuration(tmp_path):
    r, out = _generate(tmp_path, "c", SMALL.replace("lanes = 4", "lanes = 9"))
    assert r.returncode == 2
    assert r.stderr.strip() == "error: hardware.lanes: 9 exceeds the widest layer (8 neurons): the extra lanes could never be used"
    assert not out.exists()


def test_cycle_estimate_of_default_is_within_target():
    cfg = config_from_dict({})
    est = estimate_cycles(cfg)
    # ideal = (forward + update MACs) / P = 2 * (784*128 + 128*10) / 16
    assert est["ideal_train_sample"] == 2 * (784 * 128 + 128 * 10) / 16
    assert est["train_sample"] <= 1.25 * est["ideal_train_sample"]


# An `always @*` whose body only assigns a constant has an empty sensitivity list: an
# event-driven simulator (Verilator, Icarus) never runs it, so the signal keeps its initial
# value. Amaranth writes this when a constant drives part of a payload from outside its
# component; it once silently froze every bias update in Verilator (h = 1 of the bias unit).
_CONSTANT_ALWAYS = re.compile(r"always @\*\n\s+[^\n;]+ = \d+'[hbd][0-9a-fA-F_]+;\n")


@pytest.mark.parametrize("text", [SMALL, SMALL.replace('k = 2', 'kind = "dense"\nvalues = "fixed"'),
                                  '[network]\nlayers = [6, 5, 4, 3]\nmethods = ["dfa", "bp"]\n[hardware]\nlanes = 2\n'])
def test_no_constant_only_combinational_block(tmp_path, text):
    r, out = _generate(tmp_path, "c", text)
    assert r.returncode == 0, r.stderr
    verilog = (out / "dfa_engine_top.v").read_text()
    hits = _CONSTANT_ALWAYS.findall(verilog)
    assert not hits, hits[:3]
