"""dfa-engine study: the quick run writes the JSON the documentation promises; cost columns."""

import argparse
import json

import pytest

from dfa_engine import study
from dfa_engine.config import FeedbackConfig, default_config

REQUIRED = {"network", "method", "arithmetic", "epochs", "test_accuracy", "dfa_share",
            "backward_macs_vs_bp", "feedback_storage_bits", "curve"}


def test_backward_macs_and_storage():
    cfg = default_config()                      # 784-128-10 sparse DFA k=1 pm1
    bp = cfg.with_(methods=("bp",))
    assert study.backward_macs(bp) == 10 * 128
    assert study.backward_macs(cfg) == 128
    assert study.feedback_storage_bits(cfg) == 128 * (4 + 1)
    assert study.feedback_storage_bits(bp) == 0
    deep = cfg.with_(layers=(784, 256, 128, 64, 10), methods=("dfa", "dfa", "bp"), lr_shift=(7,) * 4,
                     feedback=FeedbackConfig(kind="dense", values="fixed"))
    assert study.backward_macs(deep) == 256 * 10 + 128 * 10 + 10 * 64
    assert study.feedback_storage_bits(deep) == (256 + 128) * 10 * 8


def test_sweep_formats_keep_integer_bits():
    cfg = study.sweep_formats(default_config(), 8)
    f = cfg.formats
    assert (str(f.weight), str(f.activation), str(f.error), str(f.delta), str(f.update)) == \
        ("s1.6", "s5.2", "s1.6", "s1.6", "s1.6")
    assert cfg.softmax_table_frac_bits == 2
    assert study.sweep_formats(default_config(), 16).formats == default_config().formats


def test_quick_study_writes_json_and_plots(tmp_path, capsys):
    out = tmp_path / "study.json"
    assert study.main(["--quick", "--epochs", "1", "--json", str(out), "--plots", str(tmp_path / "img")]) == 0
    report = json.loads(out.read_text())
    assert {"results", "bitwidth_sweep"} <= set(report)
    rows = report["results"]
    assert {r["network"] for r in rows} == {"784-128-10", "784-256-128-64-10"}
    assert {(r["method"], r["arithmetic"]) for r in rows} >= {
        ("bp", "float"), ("dfa", "float"), ("sparse-dfa-k1", "float"), ("sparse-dfa-k2", "float"),
        ("hybrid", "float"), ("bp", "fixed"), ("dfa", "fixed"), ("sparse-dfa-k1", "fixed")}
    for r in rows:
        assert REQUIRED <= set(r)
        assert len(r["curve"]) == r["epochs"] == 1
        assert 0.0 <= r["test_accuracy"] <= 1.0 and 0.0 <= r["dfa_share"] <= 1.0
        if r["method"] == "bp":
            assert r["backward_macs_vs_bp"] == 1.0 and r["feedback_storage_bits"] == 0
    hybrid = next(r for r in rows if r["method"] == "hybrid")
    assert hybrid["dfa_share"] == pytest.approx(2 / 3)
    assert sorted({r["bits"] for r in report["bitwidth_sweep"]}) == sorted(study.SWEEP_BITS)
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == [
        "study_bitwidth.png", "study_curves_784-128-10.png", "study_curves_784-256-128-64-10.png"]
    assert "sparse DFA k=1" in capsys.readouterr().out


def test_add_arguments_wires_as_subparser():
    parser = argparse.ArgumentParser(prog="dfa-engine")
    sub = parser.add_subparsers(dest="command")
    study.add_arguments(sub.add_parser("study"))
    args = parser.parse_args(["study", "--dataset", "digits", "--epochs", "3", "--quick", "--no-sweep"])
    assert (args.dataset, args.epochs, args.quick, args.sweep, args.json, args.plots) == \
        ("digits", 3, True, False, None, None)
