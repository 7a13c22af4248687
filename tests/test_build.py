# amaranth: UnusedElaboratable=no
"""``gen/build.py`` before the tools run: memory mapping (SPRAM on the UP5K), the fit check,
the per-method rates; and the single-port RAM's SPRAM tiling."""

import pytest
from amaranth.back import rtlil

from dfa_engine.config import load_config
from dfa_engine.gen.build import FitError, check_fit, estimate, method_rates
from dfa_engine.gen.generate import estimate_cycles
from dfa_engine.hdl.memory import SinglePortRAM, spram_plan, spram_tiles, weight_memory_geometry

UP5K = "examples/mnist_up5k.toml"


def test_spram_plan_puts_the_first_layer_of_the_up5k_example_in_four_blocks():
    cfg = load_config(UP5K)
    assert cfg.memory == "spram"
    assert weight_memory_geometry(cfg)[0] == (14, 64 * 784)     # one lane of s1.12
    assert spram_plan(cfg) == (0,)
    assert spram_tiles(14, 64 * 784) == 4          # 1 block wide x 4 deep
    assert spram_tiles(32, 32 * 784) == 4          # 2 lanes of 16 bits: 2 blocks wide x 2 deep
    assert spram_plan(cfg.with_(memory="auto")) == ()
    # P = 8 lanes of 14 bits: 7 blocks wide, 28 blocks, more than the device has: nothing goes to SPRAM
    assert spram_plan(cfg.with_(lanes=8)) == ()


def test_estimate_counts_spram_blocks_not_block_ram():
    est = estimate(load_config(UP5K), "icebreaker", 30)
    assert est["resources"]["SPRAM"]["estimate"] == 4
    names = [m["name"] for m in est["memory_map"]]
    assert "engine.core.W1.mem" not in names and "engine.core.W2.mem" in names
    check_fit(est)


def test_fit_check_names_the_resource():
    cfg = load_config(UP5K)
    with pytest.raises(FitError, match=r"^block RAM: needs \d+ SB_RAM40_4K; the iCE40UP5K has 30") as exc:
        check_fit(estimate(cfg.with_(memory="auto"), "icebreaker", 30))
    assert exc.value.resource == "block RAM"
    # 8 lanes: 8 MAC and 8 update multipliers, too many for the
    # DSPs and, as LUT multipliers, for the LUTs
    with pytest.raises(FitError, match=r"^DSP: needs 16 SB_MAC16; the iCE40UP5K has 8 \(in LUTs instead"):
        check_fit(estimate(cfg.with_(layers=(16, 16, 4), lanes=8, memory="auto"), "icebreaker", 30))


def test_rates_by_method_come_from_the_cycle_model():
    cfg = load_config(None).with_(layers=(64, 48, 32, 24, 10), methods=("dfa", "dfa", "dfa"), lanes=8)
    rates = method_rates(cfg, 50.0)
    assert list(rates) == ["dfa", "hybrid", "bp"]
    for kind, methods in (("dfa", ("dfa",) * 3), ("hybrid", ("dfa", "dfa", "bp")), ("bp", ("bp",) * 3)):
        cycles = estimate_cycles(cfg.with_(methods=methods))["train_sample"]
        assert rates[kind]["cycles_per_sample"] == cycles
        assert rates[kind]["samples_per_second"] == pytest.approx(50e6 / cycles)
    assert rates["dfa"]["cycles_per_sample"] < rates["hybrid"]["cycles_per_sample"] < rates["bp"]["cycles_per_sample"]
    one_hidden = method_rates(load_config(None), None)
    assert list(one_hidden) == ["dfa", "bp"] and one_hidden["bp"]["samples_per_second"] is None


def test_single_port_ram_in_spram_tiles():
    ram = SinglePortRAM(32, 3 * 16384 + 5, spram=True, name="W1")
    text = rtlil.convert(ram, ports=[ram.rd_addr, ram.rd_data, ram.wr_addr, ram.wr_data, ram.wr_en])
    assert text.count("cell \\SB_SPRAM256KA") == 2 * 4     # 2 blocks wide, 4 deep
    with pytest.raises(ValueError, match="^W1: SB_SPRAM256KA has no initial contents"):
        SinglePortRAM(16, 100, init=[1, 2], spram=True, name="W1")


def test_calibration_constants_are_the_recorded_fit():
    """The LUT/FF/LC model in gen/build.py is the fit benchmarks/calibrate_estimate.py wrote."""
    import json
    from pathlib import Path

    from dfa_engine.gen.build import CALIBRATION
    recorded = json.loads((Path(__file__).parent.parent / "benchmarks/results/estimate_calibration.json").read_text())
    for family, fit in CALIBRATION.items():
        for kind, coeffs in fit.items():
            assert list(coeffs) == recorded["families"][family]["fit"][kind]["coefficients"], (family, kind)


def test_cli_build_refuses_a_configuration_that_cannot_fit(tmp_path):
    """`dfa-engine build` on the default (784-128-10, 16 lanes) for the UP5K: one error line
    naming the resource, exit status 2, no synthesis, no warnings about unused objects."""
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "dfa-engine"
    r = subprocess.run([str(exe), "build", "--board", "icebreaker", "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        # (with the output-error unit's class store: 2 words x 16 lanes x 16 bits)
        "error: memory: needs 1,669,248 bits; the iCE40UP5K has 1,171,456 "
        "(30 x 4,096 in SB_RAM40_4K + 4 x 262,144 in SPRAM)"]
    assert not (tmp_path / "out" / "dfa_top.json").exists()


def test_paths_through_an_unregistered_dsp_bound_fmax():
    """nextpnr reports a path through a DSP without registers as two halves in a pseudo
    clock domain; the report adds the longest halves and bounds fmax by their sum."""
    from dfa_engine.gen.build import _constant_clock_paths

    def path(frm, to, delays):
        return {"from": frm, "to": to, "path": [{"delay": d} for d in delays]}

    gnd = "posedge $PACKER_GND_NET_$glb_clk"
    paths = [path("posedge clk", "posedge clk", [10.0, 20.0]),
             path("posedge clk", gnd, [6.0, 6.5]), path(gnd, "posedge clk", [2.0, 1.5])]
    u = _constant_clock_paths(paths)
    assert u == {"into_ns": 12.5, "out_of_ns": 3.5, "fmax_bound_mhz": 62.5}
    assert _constant_clock_paths(paths[:1]) is None
