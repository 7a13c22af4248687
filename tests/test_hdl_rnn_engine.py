"""The RNN engine (hdl/rnn_engine.py) against the RNN golden model (sim/golden_rnn.py), bit for
bit: predictions, output errors, every weight and bias, and the counters.

Small recurrent networks on sklearn's 8x8 digits read row by row (8 steps of 8 pixels) in
Amaranth's simulator, one variant of each option (dense and sparse feedback with pm1 and
pow2 values, windows of 1, 3 and all steps, ReLU and hardtanh, learning-rate shifts and a
multiplier, truncation, saturation; the BPTT baseline, truncated and full; the leaky cell
with DFA through the trace, with ``trace = false`` and with BPTT); then a dense-feedback, a
sparse-feedback, a BPTT and a leaky network over 100 real sequences each in Verilator with
random idle cycles and backpressure.
"""

import dataclasses

import numpy as np
import pytest

from dfa_engine.config import ConfigError
from dfa_engine.hdl.loopnest import PIPELINE_DEPTH
from dfa_engine.hdl.rnn_engine import RNNEngine, rnn_cycles, rnn_host_address, rnn_host_parameters, rnn_schedule
from dfa_engine.rnn_config import rnn_config_from_dict
from dfa_engine.sim.amaranth_tb import cycles_after_load, run_engine
from dfa_engine.sim.golden_rnn import initial_rnn_parameters

from _golden_compare import assert_matches_golden, digits_u8, golden_run

FORMATS = {"input": "u0.8", "weight": "s1.14", "bias": "s1.14", "activation": "s5.10", "error": "s1.14",
           "feedback": "s1.6", "delta": "s1.14", "update": "s1.14", "learning_rate": "u0.16"}


def config(*, hidden=12, window=3, activation="hardtanh", formats=None, lr_shift=(6, 4), feedback=None,
           rounding=None, learning_rate=None):
    d = {"network": {"inputs": 8, "hidden": hidden, "classes": 10, "steps": 8, "activation": activation,
                     "window": window},
         "formats": {**FORMATS, **(formats or {})},
         "training": {"lr_shift": list(lr_shift), "seed": 2},
         "feedback": {"kind": "sparse", "k": 2, "values": "pm1", "seed": 1, **(feedback or {})}}
    if rounding:
        d["rounding"] = rounding
    if learning_rate is not None:
        d["training"] = {"learning_rate": learning_rate, "seed": 2}
    return rnn_config_from_dict(d)


def rows(n, offset=0):
    """sklearn digits as sequences: row t of the image is step t (8 steps of 8 pixels)."""
    return digits_u8(n, offset, (8, 8))


DENSE = config(feedback={"kind": "dense", "values": "fixed"}, formats={"feedback": "s0.7"}, lr_shift=(8, 4))
SPARSE = config(hidden=16, window="all", activation="relu", feedback={"k": 3, "values": "pow2", "max_shift": 2},
                lr_shift=(9, 5), rounding={"update": "trunc"})

VARIANTS = {
    "dense_fixed_window3": DENSE,
    "sparse_pow2_relu_all_steps_trunc": SPARSE,
    "sparse_pm1_last_step_lr_multiplier": config(window="last", learning_rate=0.02),
    "trunc_forward_and_backward": config(window=5, rounding={"forward": "trunc", "backward": "trunc"}),
    # the BPTT baseline (section 13.8) on the same datapath: truncated and full
    "bptt_window3": config(lr_shift=(6, 4)).with_(method="bptt"),
    "bptt_all_steps_relu_trunc": config(window="all", activation="relu", rounding={"backward": "trunc"},
                                        lr_shift=(7, 4)).with_(method="bptt"),
    # the leaky cell (section 13.9), DFA through each neuron's eligibility trace: shifts 0..3
    # (every neuron i = 0..3 mod 4), dense and sparse, a window of every step and of 3
    "leaky_trace_dense_all": config(window="all", feedback={"kind": "dense", "values": "fixed"},
                                    formats={"feedback": "s0.7"}, lr_shift=(6, 4)).with_(cell="leaky",
                                                                                         leak_max_shift=3),
    "leaky_trace_sparse_window3_trunc": config(window=3, rounding={"forward": "trunc", "backward": "trunc"},
                                               lr_shift=(5, 4)).with_(cell="leaky", leak_max_shift=2),
    # BPTT through the leak (13.9): the kept part of dL/dh_t starts the next step's sum
    "leaky_bptt_window4": config(window=4, lr_shift=(6, 4)).with_(method="bptt", cell="leaky", leak_max_shift=3),
    # network.trace = false: alpha g at every step of the window
    "leaky_uniform_sparse_window5": config(window=5, lr_shift=(5, 4)).with_(cell="leaky", leak_max_shift=3,
                                                                             trace=False),
    # narrow formats: states, deltas and weights saturate
    "saturating": config(formats={"activation": "s1.10", "weight": "s0.10", "bias": "s0.10", "update": "s0.10",
                                  "delta": "s0.10", "error": "s0.14"}, lr_shift=(0, 0)),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_engine_matches_golden_model(name):
    cfg = VARIANTS[name]
    X, Y = rows(4, offset=10)
    Y[1] = 12                                # a training sequence with a bad label: inferred, rejected
    train = [True, True, True, True]
    results, params, counters = run_engine(cfg, X, Y, train=train, idle=0.2, backpressure=0.3, seed=2)
    g, want = golden_run(cfg, X, Y, train)
    assert_matches_golden(results, params, want, rnn_host_parameters(g.parameters()))
    # the recurrent weights (both halves), the readout and both biases all learnt something
    (W1, b1), (W2, b2) = params
    init = initial_rnn_parameters(cfg)
    I = cfg.inputs
    assert (W1[:, :I] != init["Wx"]).any() and (W1[:, I:] != init["Wh"]).any() and (W2 != init["W2"]).any()
    assert (b1 != 0).any() and (b2 != 0).any()
    assert counters["samples_trained"] == 3 and counters["samples_inferred"] == 1
    assert counters["rejected_labels"] == 1 and counters["samples_received"] == 4
    assert counters["saturation_events"] == sum(g.stats.values())
    if name == "saturating":
        assert counters["saturation_events"] > 0


def test_host_map_writes_and_refusals():
    cfg = DENSE
    f = cfg.formats
    X, Y = rows(1, offset=50)
    H, I = cfg.hidden, cfg.inputs
    bad = [
        (rnn_host_address(cfg, "weight", 0, H, 0), 0, 0),                      # a row past W1
        (rnn_host_address(cfg, "bias", 1, cfg.classes), 0, 0),                 # a bias past b2
        (rnn_host_address(cfg, "weight", 1, 0, 0), 1, f.weight.max_raw + 1),   # value too large
        (rnn_host_address(cfg, "counter", counter="samples_trained"), 1, 5),   # counters are read-only
    ]
    good = [(rnn_host_address(cfg, "weight", 0, 3, I + 2), 1, -321),           # W_h[3, 2]
            (rnn_host_address(cfg, "bias", 0, 4), 1, 99)]
    results, params, counters = run_engine(cfg, X, Y, train=[False], host_ops=[(0, *op) for op in bad + good])
    assert [e for _, e in counters["host"]] == [1] * len(bad) + [0, 0]
    assert counters["rejected_addresses"] == len(bad)
    init = initial_rnn_parameters(cfg)
    assert counters["host"][len(bad)][0] == int(init["Wh"][3, 2])
    assert params[0][0][3, I + 2] == -321 and params[0][1][4] == 99
    assert params[1][0][0, 0] == init["W2"][0, 0]


def test_engine_refuses_what_it_cannot_run():
    """Stochastic rounding, and recurrences too short for the pipeline (a state read back
    before it is written), are refused with the field and the reason."""
    with pytest.raises(ConfigError, match="rounding.update"):
        RNNEngine(DENSE.with_(rounding_update="stochastic"))
    need = PIPELINE_DEPTH + 1
    with pytest.raises(ConfigError, match=rf"network.hidden: 3 is too small: inputs \+ hidden must be at least {need}"):
        RNNEngine(DENSE.with_(inputs=2, hidden=3))
    with pytest.raises(ConfigError, match=f"network.hidden: 4 is too small for BPTT on this engine: at least {need}"):
        RNNEngine(DENSE.with_(hidden=4, method="bptt"))
    lfsr = dataclasses.replace(DENSE.feedback, kind="sparse", storage="lfsr")
    with pytest.raises(ConfigError, match="feedback.storage: 'lfsr' is not implemented by the RNN engine yet"):
        RNNEngine(DENSE.with_(feedback=lfsr))
    RNNEngine(DENSE.with_(feedback=lfsr, method="bptt"))     # BPTT reads no feedback


def test_cycle_count_is_the_schedule():
    """A training sequence takes the schedule's cycles (``rnn_cycles``), measured in the
    simulator between the last input transfer and the result."""
    cfg = DENSE
    fwd, _ = rnn_schedule(cfg)
    assert fwd[0].cycles == cfg.steps * cfg.hidden * (cfg.inputs + cfg.hidden)   # every MAC of the recurrence
    # B e: C terms a row with dense feedback, the row's k (index, value) entries with sparse
    proj = {name: [p for p in rnn_schedule(VARIANTS[name])[1] if p.kind == "PROJ"][0]
            for name in ("dense_fixed_window3", "sparse_pow2_relu_all_steps_trunc")}
    assert proj["dense_fixed_window3"].inner == (cfg.classes,)
    assert proj["sparse_pow2_relu_all_steps_trunc"].inner == (SPARSE.feedback.k,)
    X, Y = rows(1, offset=70)
    for c in (cfg, VARIANTS["leaky_trace_dense_all"]):      # the leaky cell adds the TRACE pass
        cyc = rnn_cycles(c)
        assert cycles_after_load(RNNEngine(c), X[0], Y[0]) == cyc["train_sample"] - cyc["load"] - cyc["result"]
    trace = [p for p in rnn_schedule(VARIANTS["leaky_trace_dense_all"])[1] if p.kind == "TRACE"][0]
    assert trace.cycles == VARIANTS["leaky_trace_dense_all"].hidden * VARIANTS["leaky_trace_dense_all"].steps


# ---- Verilator: 100 real sequences per network ----------------------------------------------

@pytest.mark.parametrize("name", ["dense_fixed_window3", "sparse_pow2_relu_all_steps_trunc", "bptt_window3",
                                  "leaky_trace_dense_all"])
def test_verilator_100_sequences_bit_exact(name):
    from dfa_engine.sim.verilator_run import run_training

    cfg = VARIANTS[name]
    X, Y = rows(100, offset=400)
    train = np.ones(100, dtype=bool)
    train[[9, 61]] = False
    Y[44] = 13
    s = run_training(cfg, X, Y, train, idle=0.2, backpressure=0.3, tag=f"rnn_{name}")
    assert s["mismatch"] is None and s["params_equal"] and not s["test_failed"]
    c = s["counters"]
    assert c["samples_trained"] == 97 and c["samples_inferred"] == 3 and c["rejected_labels"] == 1
    assert c["saturation_events"] == s["golden_saturation_events"]


def test_verilator_scoreboard_catches_a_difference():
    from dfa_engine.sim.verilator_run import run_training

    cfg = VARIANTS["dense_fixed_window3"]
    X, Y = rows(20, offset=600)
    s = run_training(cfg, X, Y, tag="rnn_catch", golden_cfg=cfg.with_(window=2))
    assert s["test_failed"] and s["mismatch"] is not None
