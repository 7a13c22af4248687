"""Board top-levels: PLL parameters against the toolchains' calculators, and ``do_build=False``
smoke tests (elaborate and generate the build plan, no tools run)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dfa_engine.boards.clocking import PowerOnReset, ecp5_pll, ice40_pll
from dfa_engine.boards.icebreaker import ICEBreakerPlatform, ICEBreakerTop
from dfa_engine.boards.ulx3s import PLATFORMS, ULX3STop
from dfa_engine.config import config_from_dict

SMALL = config_from_dict({"network": {"layers": [16, 8, 4]}, "hardware": {"lanes": 2}})
BIN = Path(sys.executable).parent

#: (f_in, f_out) -> (DIVR, DIVF, DIVQ, FILTER_RANGE, achieved MHz), as printed by icepll
ICEPLL = {(12, 24): (0, 63, 5, 1, 24.0), (12, 30): (0, 79, 5, 1, 30.0), (12, 25): (0, 66, 5, 1, 25.125),
          (12, 40): (0, 52, 4, 1, 39.75), (12, 16): (0, 84, 6, 1, 15.9375), (12, 100): (0, 66, 3, 1, 100.5)}
#: (f_in, f_out) -> (CLKI_DIV, CLKFB_DIV, CLKOP_DIV, CLKOP_CPHASE), as written by ecppll
ECPPLL = {(25, 100): (1, 4, 6, 2), (25, 50): (1, 2, 12, 5), (25, 40): (5, 8, 15, 7), (25, 33.3): (3, 4, 18, 9),
          (25, 48): (8, 15, 13, 6), (12, 48): (1, 4, 12, 5), (27, 65): (5, 12, 9, 4), (25, 10): (5, 2, 60, 30)}


@pytest.mark.parametrize("f_in,f_out", sorted(ICEPLL))
def test_ice40_pll_matches_icepll(f_in, f_out):
    p = ice40_pll(f_in, f_out)
    assert (p.divr, p.divf, p.divq, p.filter_range, p.f_out) == ICEPLL[f_in, f_out]
    assert 533 <= p.f_vco <= 1066


@pytest.mark.parametrize("f_in,f_out", sorted(ECPPLL))
def test_ecp5_pll_matches_ecppll(f_in, f_out):
    p = ecp5_pll(f_in, f_out)
    assert (p.clki_div, p.clkfb_div, p.clkop_div, p.clkop_cphase) == ECPPLL[f_in, f_out]
    assert 400 <= p.f_vco <= 800


@pytest.mark.skipif(not (BIN / "yowasp-icepll").exists(), reason="yowasp-icepll not installed")
def test_ice40_pll_against_the_tool():
    for f_out in (20, 33.3, 48, 60):
        out = subprocess.run([str(BIN / "yowasp-icepll"), "-i", "12", "-o", str(f_out)],
                             capture_output=True, text=True, check=True).stdout
        got = {k: int(v) for k, v in re.findall(r"(DIVR|DIVF|DIVQ|FILTER_RANGE):\s+(\d+)", out)}
        p = ice40_pll(12, f_out)
        assert got == {"DIVR": p.divr, "DIVF": p.divf, "DIVQ": p.divq, "FILTER_RANGE": p.filter_range}


@pytest.mark.skipif(not (BIN / "yowasp-ecppll").exists(), reason="yowasp-ecppll not installed")
def test_ecp5_pll_against_the_tool(tmp_path):
    for f_out in (62.5, 75, 125):
        subprocess.run([str(BIN / "yowasp-ecppll"), "-i", "25", "-o", str(f_out), "-f", "pll.v"],
                       cwd=tmp_path, capture_output=True, check=True)
        got = {k: int(v) for k, v in re.findall(r"\.(CLKI_DIV|CLKFB_DIV|CLKOP_DIV|CLKOP_CPHASE)\((\d+)\)",
                                               (tmp_path / "pll.v").read_text())}
        p = ecp5_pll(25, f_out)
        assert got == {"CLKI_DIV": p.clki_div, "CLKFB_DIV": p.clkfb_div, "CLKOP_DIV": p.clkop_div,
                       "CLKOP_CPHASE": p.clkop_cphase}


def test_pll_wrong_frequency():
    with pytest.raises(ValueError, match=r"^iCE40 PLL output frequency must be 16-275 MHz, not 300$"):
        ice40_pll(12, 300)
    with pytest.raises(ValueError, match=r"^ECP5 PLL output frequency must be 10-400 MHz, not 5$"):
        ecp5_pll(25, 5)
    with pytest.raises(ValueError, match=r"^Power-on reset length must be a positive number of cycles, not 0$"):
        PowerOnReset(0)


def _plan_text(plan):
    return {k: (v if isinstance(v, str) else v.decode("utf-8", "replace")) for k, v in plan.files.items()}


def test_icebreaker_smoke():
    top = ICEBreakerTop(SMALL, freq_mhz=30, baud=115200)
    assert top.freq_mhz == 30.0 and top.divisor == round(30e6 / 115200)
    plan = ICEBreakerPlatform().build(top, name="dfa_top", do_build=False, emit_src=False)
    files = _plan_text(plan)
    pcf = files["dfa_top.pcf"]
    assert "set_io uart_0__rx__io 6" in pcf and "set_io uart_0__tx__io 9" in pcf
    assert "set_frequency sys_clk 30.0" in pcf
    il = files["dfa_top.il"]
    assert "SB_PLL40_PAD" in il and "parameter \\DIVF 79\n" in il
    for text in files.values():
        assert "/work/" not in text and str(Path.cwd()) not in text


def test_icebreaker_smoke_no_pll():
    plan = ICEBreakerPlatform().build(ICEBreakerTop(SMALL, freq_mhz=12), name="dfa_top", do_build=False,
                                      emit_src=False)
    files = _plan_text(plan)
    assert "SB_PLL40" not in files["dfa_top.il"]
    assert "set_frequency sys_clk 12.0" in files["dfa_top.pcf"]


@pytest.mark.parametrize("board", sorted(PLATFORMS))
def test_ulx3s_smoke(board):
    top = ULX3STop(SMALL, freq_mhz=100, baud=115200)
    assert top.freq_mhz == 100.0
    plan = PLATFORMS[board]().build(top, name="dfa_top", do_build=False, emit_src=False)
    files = _plan_text(plan)
    lpf = files["dfa_top.lpf"]
    assert 'LOCATE COMP "uart_0__rx__io" SITE "M1"' in lpf and 'LOCATE COMP "uart_0__tx__io" SITE "L4"' in lpf
    assert 'FREQUENCY NET "sys_clk" 100000000.0 HZ' in lpf
    assert "EHXPLLL" in files["dfa_top.il"]
    device = PLATFORMS[board].device
    assert f"--{device.split('-')[1][:-1]}k" in files["build_dfa_top.sh"]
    for text in files.values():
        assert "/work/" not in text and str(Path.cwd()) not in text


def test_wrong_uart_rate():
    with pytest.raises(ValueError, match="cannot make 3000000 baud"):
        ULX3STop(SMALL, freq_mhz=25, baud=3_000_000)
