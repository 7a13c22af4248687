"""The simulated board: the link top (UART pins, host link, engine; ``boards/top.py``) in
Verilator, with ``HostClient`` as the host on the other end of the line
(``sim/board_run.py``, ``sim/cocotb_board.py``).

One build (about 25 s) serves all three tests: a 64-16-10 sparse-DFA engine with 4 lanes,
8 clock cycles per UART bit, its weight memories loaded over the link.
"""

import subprocess
import sys

import pytest

from dfa_engine.config import config_from_dict, load_config
from dfa_engine.data import load_dataset
from dfa_engine.sim.board_run import board_on_pty, run_board

CFG = config_from_dict({"network": {"layers": [64, 16, 10]}, "hardware": {"lanes": 4}})
DIVISOR = 8


def _digits(n):
    ds = load_dataset("digits")
    return CFG.formats.input.from_float(ds.x_train[:n]), ds.y_train[:n]


def test_board_end_to_end_bit_exact():
    """Link status, single writes and reads, the initial parameters loaded through the link,
    40 training samples and 20 inferences checked against the golden model one by one,
    every weight and bias read back, engine and link counters."""
    X, Y = _digits(60)
    s = run_board(CFG, "end_to_end", X, Y, divisor=DIVISOR, tag="e2e", n_train=40, n_infer=20)
    assert s["errors"] == [] and s["failed"] == 0, s["log"]
    assert s["counters"]["samples_trained"] == 39 and s["counters"]["samples_inferred"] == 20
    assert s["link_status"]["frames_ok"] == s["requests"]


@pytest.mark.parametrize("seed", [1])
def test_board_link_under_garbage(seed):
    """Random bytes, truncated frames, bad CRCs, framing errors, wrong lengths and types
    and overlong frames before a third of the requests (and random gaps between bytes):
    every request executed once, in order, one response each; the link counters equal the
    software receiver's; the weights equal the golden model's."""
    X, Y = _digits(50)
    s = run_board(CFG, "garbage", X, Y, divisor=DIVISOR, tag=f"garbage{seed}", n_train=40, n_infer=10,
                  n_access=80, seed=seed, rate=0.3, gap=2 * DIVISOR)
    assert s["errors"] == [] and s["failed"] == 0, s["log"]
    assert min(s["garbage"].values()) > 0
    status = s["link_status"]
    assert status["frames_ok"] == s["requests"]
    assert status["bad_crc"] > 0 and status["bad_frame"] > 0 and status["bytes_dropped"] > 0


def test_cli_train_port_against_the_simulated_board(tmp_path):
    """The whole chain: ``dfa-engine train --port`` (pyserial, HostClient) on one side of a
    pseudo-terminal, the simulated board's UART pins on the other."""
    config = tmp_path / "board.toml"
    config.write_text("[network]\nlayers = [64, 16, 10]\n\n[hardware]\nlanes = 4\n")
    assert load_config(config).to_dict() == CFG.to_dict()
    with board_on_pty(CFG, divisor=DIVISOR) as board:
        r = subprocess.run([sys.executable, "-m", "dfa_engine.cli", "train", str(config), "--port", board["port"],
                            "--dataset", "digits", "--samples", "20", "--test-samples", "10"],
                           capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "link counters: frames_ok 2460, bad_crc 0, bad_frame 0, bytes_dropped 0" in r.stdout
    assert "engine counters: samples_trained 20, samples_inferred 10," in r.stdout
    assert r.stdout.strip().endswith("bit-exact against the golden model: yes")
    assert board["summary"]["failed"] == 0
