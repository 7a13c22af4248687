"""The CLI contract for invalid configurations: one line on stderr, no traceback, status 2."""

import subprocess
import sys

import pytest

BAD = [
    ("[feedback]\nk = 0\n", "feedback.k"),
    ("[netwrk]\nlayers = [6, 5, 4]\n", "netwrk"),
    ('[network]\nlayers = [784, 128, 10]\nactivation = "tanh"\n', "network.activation"),
    ("[softmax]\ntable_size = 100\n", "softmax.table_size"),
    ("[network\nlayers = [1, 2]\n", "(bad.toml)"),
]


def _train(config):
    return subprocess.run([sys.executable, "-m", "dfa_engine.cli", "train", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)


def _check_one_line_error(r, field):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    assert lines[0].startswith(f"error: {field}: ")


@pytest.mark.parametrize("text, field", BAD, ids=[f for _, f in BAD])
def test_train_with_invalid_config_prints_one_line(tmp_path, text, field):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    _check_one_line_error(_train(path), field)


def test_train_with_missing_config(tmp_path):
    _check_one_line_error(_train(tmp_path / "missing.toml"), "(file)")


def test_train_with_non_utf8_config(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[network]\nactivation = "\xff"\n')
    _check_one_line_error(_train(path), "(file)")


def test_build_with_a_negative_placement_seed(tmp_path):
    """The seed is refused before anything is elaborated or written."""
    r = subprocess.run([sys.executable, "-m", "dfa_engine.cli", "build", "--board", "icebreaker", "--seed=-1",
                        "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.strip() == "error: Placement seed must be an integer from 0 to 2147483647, not -1"
    assert not (tmp_path / "out").exists()
