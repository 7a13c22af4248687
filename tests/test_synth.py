"""Synthesis smoke tests: a small configuration through the whole open flow (Yosys,
nextpnr, the packer) for each FPGA family, exactly as ``dfa-engine build`` runs it. The
example configurations' full builds are benchmarks (``benchmarks/synth.py``)."""

import json

import pytest

from dfa_engine.config import config_from_dict
from dfa_engine.gen.build import build
from dfa_engine.hdl.memory import spram_plan

SMALL = {"network": {"layers": [16, 8, 4]}, "hardware": {"lanes": 1}}
REQUIRED = {"board", "device", "fmax_mhz", "target_mhz", "utilization", "cycles_per_sample", "samples_per_second"}


@pytest.mark.slow
@pytest.mark.parametrize("board,freq,bitstream,extra", [
    ("icebreaker", 16.0, "dfa_top.bin", {}),
    ("ulx3s-12f", 50.0, "dfa_top.bit", {}),
    ("icebreaker", 16.0, "dfa_top.bin", {"memory": "spram"}),
])
def test_small_engine_builds_and_meets_timing(tmp_path, board, freq, bitstream, extra):
    cfg = config_from_dict({**SMALL, "hardware": {**SMALL["hardware"], **extra}})
    rep = build(cfg, board, tmp_path / "out", freq_mhz=freq, echo=lambda s: None)
    assert rep["status"] == "ok", (rep["failed_step"], rep["error"])
    assert rep["timing_met"] and rep["fmax_mhz"] >= rep["target_mhz"]
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert REQUIRED <= set(on_disk)
    util = on_disk["utilization"]
    for resource in ("LUT", "FF", "DSP", "BRAM"):
        assert 0 <= util[resource]["used"] <= util[resource]["available"], resource
    assert util["DSP"]["used"] >= 2            # the MAC and the update multiplier are DSPs
    if board.startswith("ulx3s"):
        # the MAC's and the update's multipliers are MULT18X18Ds with their own input and
        # output registers (hdl/arith.py RegisteredProduct), not bare multipliers
        netlist = json.loads((tmp_path / "out" / "dfa_top.json").read_text())
        mults = [c["parameters"] for mod in netlist["modules"].values() for c in mod["cells"].values()
                 if c["type"] == "MULT18X18D"]
        assert len(mults) == util["DSP"]["used"] >= 2
        for params in mults:
            assert {k: params[k].strip() for k in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_OUTPUT_CLK")} == {
                "REG_INPUTA_CLK": "CLK0", "REG_INPUTB_CLK": "CLK0", "REG_OUTPUT_CLK": "CLK0"}
    if extra.get("memory") == "spram":
        # W1 (16 bits x 128 words) and W2 (16 x 32): one block each (hdl/memory.py spram_plan)
        assert spram_plan(cfg) == (0, 1) and util["SPRAM"]["used"] == 2
    assert rep["samples_per_second"] == pytest.approx(rep["target_mhz"] * 1e6 / rep["cycles_per_sample"])
    assert (tmp_path / "out" / bitstream).stat().st_size > 10_000
    for path in (tmp_path / "out").iterdir():
        if path.suffix in (".json", ".v", ".il", ".pcf", ".lpf", ".ys", ".sh"):
            assert str(tmp_path) not in path.read_text(errors="replace"), path.name


@pytest.mark.slow
@pytest.mark.parametrize("family", ["cnn", "rnn", "rnn_leaky"])
def test_small_loopnest_engine_builds_for_ecp5(tmp_path, family):
    """A small CNN and a small RNN engine (hdl/cnn_engine.py, hdl/rnn_engine.py; the RNN also
    with the leaky cell, whose state copy and TRACE pass are new logic) behind the host link,
    through the whole ECP5 flow at 25 MHz, with their report."""
    if family == "cnn":
        from dfa_engine.cnn_config import cnn_config_from_dict

        cfg = cnn_config_from_dict({"network": {"input": [1, 8, 8], "layers": [
            {"type": "conv", "channels": 4, "kernel": 3, "padding": 1, "method": "dfa"}, {"type": "maxpool", "size": 2},
            {"type": "conv", "channels": 4, "kernel": 3, "padding": 1, "groups": 2, "method": "bp"},
            {"type": "flatten"}, {"type": "dense", "features": 10}]},
            "training": {"lr_shift": [8, 4, 4]}, "feedback": {"groups": 2}})
    else:
        from dfa_engine.rnn_config import rnn_config_from_dict

        leaky = {"cell": "leaky", "leak_max_shift": 3} if family == "rnn_leaky" else {}
        cfg = rnn_config_from_dict({"network": {"inputs": 8, "hidden": 12, "classes": 10, "steps": 8, "window": 3,
                                                **leaky},
                                    "formats": {"feedback": "s0.7"}, "training": {"lr_shift": [8, 4]},
                                    "feedback": {"kind": "dense", "values": "fixed"}})
    rep = build(cfg, "ulx3s-12f", tmp_path / "out", freq_mhz=25.0, echo=lambda s: None)
    assert rep["status"] == "ok", (rep["failed_step"], rep["error"])
    assert rep["timing_met"] and rep["fmax_mhz"] >= 25.0
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert REQUIRED <= set(on_disk) and on_disk["network"] == cfg.network_name
    engine = json.loads((tmp_path / "out" / "engine.json").read_text())
    assert engine["family"] == family.split("_")[0] and on_disk["cycles_per_sample"] == engine["cycles_per_sample"]["train_sample"]
    util = on_disk["utilization"]
    # the shared multiplier is DSPs; the memories are block RAM (the smallest ones LUT RAM)
    assert 1 <= util["DSP"]["used"] <= 4 and util["BRAM"]["used"] >= 1
    assert (tmp_path / "out" / "dfa_top.bit").stat().st_size > 10_000
