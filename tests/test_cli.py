"""The dfa-engine command as a user runs it."""

import json
import subprocess
import sys

import pytest


def _run(*args):
    return subprocess.run([sys.executable, "-m", "dfa_engine.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("sub", ["", "rtl", "generate", "train", "check", "study", "trace-diff"])
def test_help(sub):
    r = _run(*([sub] if sub else []), "--help")
    assert r.returncode == 0
    assert "usage: dfa-engine" in r.stdout


def test_train_default_small(tmp_path):
    out = tmp_path / "h.json"
    r = _run("train", "--epochs", "1", "--samples", "300", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "test accuracy:" in r.stdout
    hist = json.loads(out.read_text())["history"]
    assert len(hist) == 1 and 0.3 < hist[0]["test_accuracy"] <= 1.0


def test_train_rejects_input_size_mismatch():
    r = _run("train", "--dataset", "digits", "--epochs", "1")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: network.layers[0]: 784 must equal the digits input size 64"


def test_check_prints_derived_widths():
    r = _run("check")
    assert r.returncode == 0
    d = json.loads(r.stdout)
    assert d["layers"] == [784, 128, 10]
    # s1.14 x u0.8 products (24 bits) summed over 785 terms (784 products, 1 bias): 24 + 10 bits;
    # layer 2: s1.14 x s5.10 (32 bits), 129 terms: 32 + 8 bits.
    assert d["derived"]["accumulator_bits_required"] == [34, 40]


def test_trace_diff_reports_first_difference(tmp_path):
    from dfa_engine.config import default_config
    from dfa_engine.data import load_dataset
    from dfa_engine.sim.golden import GoldenModel

    cfg = default_config()
    ds = load_dataset("mnist5k")
    x = cfg.formats.input.from_float(ds.x_train[:3])
    m = GoldenModel(cfg, trace=True)
    m.train_epoch(x, ds.y_train[:3])
    m.trace.save(tmp_path / "a.npz")
    m.trace.records[2]["e"][4] += 1
    m.trace.save(tmp_path / "b.npz")
    same = _run("trace-diff", str(tmp_path / "a.npz"), str(tmp_path / "a.npz"))
    assert same.returncode == 0 and "traces agree" in same.stdout
    r = _run("trace-diff", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"))
    assert r.returncode == 1
    assert "sample 2, tensor e[4]" in r.stdout


def test_check_and_generate_cnn_and_rnn_configurations(tmp_path):
    """The CNN and RNN examples go through the same commands as an MLP configuration: check
    prints the network and the engine's cycles, generate writes the Verilog and an
    engine.json whose schedule adds up to the cycle count it reports."""
    from dfa_engine.hdl.loopnest import PIPELINE_DEPTH

    for example, family, network in (("cnn_2conv_hybrid", "cnn", "conv8-mp2-conv16-mp2-fc10"),
                                     ("rnn_rowwise_dfa", "rnn", "in28-rnn128x28-fc10")):
        r = _run("check", f"examples/{example}.toml")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["derived"]["network"] == network
        out = tmp_path / family
        r = _run("generate", f"examples/{example}.toml", "-o", str(out))
        assert r.returncode == 0, r.stderr
        info = json.loads((out / "engine.json").read_text())
        assert info["family"] == family and info["network"] == network
        c = info["cycles_per_sample"]
        assert c == d["derived"]["engine_cycles_per_sample"]
        passes = sum(p["cycles"] + PIPELINE_DEPTH for p in info["schedule"])
        assert c["train_sample"] == c["load"] + c["output_error"] + c["result"] + passes
        assert f"{c['train_sample']:,} cycles per training sample" in r.stdout
        assert "module dfa_engine_top" in (out / "dfa_engine_top.v").read_text()


def test_rtl_rejects_a_cnn_whose_input_is_not_the_data_sets(tmp_path):
    cfg = tmp_path / "cnn.toml"
    cfg.write_text(open("examples/cnn_2conv_hybrid.toml").read().replace("input = [1, 28, 28]", "input = [1, 8, 8]"))
    r = _run("rtl", str(cfg), "--train-samples", "2", "--test-samples", "0")
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: network.input: [1, 8, 8] must hold the mnist5k input size 784 "
                                "(the engine reads 64 values a sample)")


@pytest.mark.parametrize("example", ["cnn_2conv_hybrid", "rnn_rowwise_dfa"])
def test_train_cnn_and_rnn_golden_models(tmp_path, example):
    """dfa-engine train runs the CNN's and the RNN's golden model like the MLP's, and says
    plainly that a board of either is not driven over --port yet."""
    out = tmp_path / "h.json"
    r = _run("train", f"examples/{example}.toml", "--epochs", "1", "--samples", "60", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "bit-exact golden model" in r.stdout and "test accuracy:" in r.stdout
    hist = json.loads(out.read_text())["history"]
    assert len(hist) == 1 and 0.0 <= hist[0]["test_accuracy"] <= 1.0
    r = _run("train", f"examples/{example}.toml", "--port", "/dev/null")
    assert r.returncode == 2 and "--port: the host client drives MLP engines only" in r.stderr
