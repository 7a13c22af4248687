"""``dfa-engine train --port``: the command against a board model on a pseudo-terminal
(a real ``serial.Serial`` on one side, ``tests/_board_model.py`` on the other), and its
one-line errors."""

import subprocess
import sys

import pytest
from _board_model import BoardModel, serve_pty

from dfa_engine.config import load_config

TOML = "[network]\nlayers = [64, 16, 10]\n\n[hardware]\nlanes = 4\n"


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "board.toml"
    path.write_text(TOML)
    return path


def _train(*args, pre=""):
    code = f"import sys; {pre}from dfa_engine.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "train", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def _one_line_error(r, text):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stderr.strip().splitlines() == [text]


def test_train_port_bit_exact(config):
    board = BoardModel(load_config(config))
    path, stop = serve_pty(board)
    try:
        r = _train(config, "--port", path, "--dataset", "digits", "--samples", 30, "--test-samples", 20)
    finally:
        stop()
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "epoch   1: train " in out
    assert "training over the link: " in out and " samples/s" in out
    assert "test accuracy: " in out and "(20 samples inferred on the board)" in out
    assert "link counters: frames_ok " in out and "engine counters: samples_trained 30," in out
    assert out.strip().endswith("bit-exact against the golden model: yes")
    assert board.counters["samples_trained"] == 30 and board.counters["samples_inferred"] == 20
    assert board.counters["rejected_addresses"] == 0


def test_train_port_reports_a_board_that_differs(config):
    """A board that trains with another learning rate: the first difference is named."""
    board = BoardModel(load_config(config).with_(lr_shift=[3, 3]))
    path, stop = serve_pty(board)
    try:
        r = _train(config, "--port", path, "--dataset", "digits", "--samples", 5, "--test-samples", 2)
    finally:
        stop()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "bit-exact against the golden model: no" in r.stdout
    assert "first difference: epoch 1, training sample 1: " in r.stdout


def test_train_port_no_such_port(config, tmp_path):
    missing = tmp_path / "ttyNONE"
    _one_line_error(_train(config, "--port", missing, "--dataset", "digits"),
                    f"error: cannot open {missing}: No such file or directory")


def test_train_port_without_pyserial(config):
    _one_line_error(_train(config, "--port", "/dev/ttyUSB0", "--dataset", "digits", pre="sys.modules['serial'] = None; "),
                    "error: --port needs pyserial: pip install pyserial")


def test_train_port_board_silent(config):
    path, stop = serve_pty(None)
    try:
        r = _train(config, "--port", path, "--dataset", "digits", "--samples", 1)
    finally:
        stop()
    _one_line_error(r, f"error: the board on {path} did not answer: No response to WRITE (transport read timed out)")


def test_train_port_bad_baud(config):
    _one_line_error(_train(config, "--port", "/dev/ttyUSB0", "--baud", 0, "--dataset", "digits"),
                    "error: --baud: 0 must be a positive number of bits per second")
