"""The generated engine in Verilator (cocotb runner), trained on real digits, bit-exact.

Each configuration gets its own build directory. The cocotb module checks every
prediction and output error against the golden model as it appears and, at the end,
every weight, bias and counter read back through the host port.
"""

import numpy as np
import pytest

from dfa_engine.config import config_from_dict
from dfa_engine.data import load_dataset
from dfa_engine.sim.verilator_run import run_training

CONFIGS = {
    # 1 hidden layer, sparse DFA k=1 (+-1), P=4, default formats
    "dfa-k1-P4": {"network": {"layers": [64, 32, 10], "method": "dfa"}, "training": {"lr_shift": 5},
                  "hardware": {"lanes": 4}},
    # 3 hidden layers, hybrid DFA/BP/DFA, k=2 with +-2^-s values, hardtanh, P=16, a second format set
    "hybrid-3hidden-k2-P16": {
        "network": {"layers": [64, 24, 16, 20, 10], "methods": ["dfa", "bp", "dfa"], "activation": "hardtanh"},
        "training": {"lr_shift": [5, 5, 5, 6]},
        "feedback": {"k": 2, "values": "pow2", "max_shift": 2},
        "formats": {"weight": "s2.11", "bias": "s2.11", "update": "s1.11", "activation": "s3.8",
                    "error": "s1.10", "delta": "s1.10", "feedback": "s1.4"},
        "hardware": {"lanes": 16}},
    # pure BP, P=1, learning-rate multiplier
    "bp-P1-multiplier": {"network": {"layers": [64, 16, 10], "method": "bp"}, "training": {"learning_rate": 0.05},
                         "hardware": {"lanes": 1}},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_rtl_trains_bit_exact_on_digits(name):
    cfg = config_from_dict(CONFIGS[name])
    ds = load_dataset("digits")
    n = 200
    X = cfg.formats.input.from_float(ds.x_train[:n])
    Y = ds.y_train[:n].copy()
    summary = run_training(cfg, X, Y, idle=0.25, backpressure=0.3, tag=name)
    assert summary["mismatch"] is None
    assert summary["params_equal"] is True
    assert summary["counters"]["samples_trained"] == n
    assert summary["counters"]["saturation_events"] == summary["golden_saturation_events"]
    assert [r["trained"] for r in summary["results"]] == [1] * n


def test_rtl_bad_labels_and_inference_mixed_in():
    cfg = config_from_dict(CONFIGS["dfa-k1-P4"])
    ds = load_dataset("digits")
    n = 60
    X = cfg.formats.input.from_float(ds.x_train[:n])
    Y = ds.y_train[:n].copy()
    Y[[3, 17]] = [10, 65535]        # outside the class range: counted, rejected, not trained
    train = np.ones(n, dtype=bool)
    train[[5, 40]] = False           # inference only
    summary = run_training(cfg, X, Y, train=train, idle=0.1, backpressure=0.5, tag="badlabels")
    assert summary["mismatch"] is None and summary["params_equal"]
    c = summary["counters"]
    assert (c["samples_trained"], c["samples_inferred"], c["rejected_labels"], c["samples_received"]) == (56, 2, 2, 60)
    assert [r["rejected"] for r in summary["results"]].count(1) == 2
