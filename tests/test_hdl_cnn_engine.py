"""The CNN engine (hdl/cnn_engine.py) against the CNN golden model (sim/golden_cnn.py), bit for
bit: predictions, output errors, every weight and bias, and the counters.

Small networks on sklearn's 8x8 digits in Amaranth's simulator, one variant of every pass
each (stride, padding, groups, max/average/no pooling, dense hidden layers, DFA and BP,
ReLU/hardtanh, pm1/pow2 feedback, dilations 2 and 3, k taps, learning-rate shift and
multiplier, truncation, saturation); then two networks over 100 real samples each in
Verilator with random idle cycles and backpressure, and the host map's refusals.
"""

import dataclasses

import numpy as np
import pytest

from dfa_engine.cnn_config import cnn_config_from_dict
from dfa_engine.config import ConfigError
from dfa_engine.hdl.cnn_engine import (CNN_COUNTERS, CNNEngine, cnn_address_layout, cnn_cycles, cnn_host_address,
                                       schedule)
from dfa_engine.sim.amaranth_tb import cycles_after_load, run_engine
from dfa_engine.sim.golden_cnn import GoldenCNN, initial_cnn_parameters

from _golden_compare import assert_matches_golden, digits_u8, golden_run

FORMATS = {"input": "u0.8", "weight": "s1.14", "bias": "s1.14", "activation": "s5.10", "error": "s1.14",
           "feedback": "s1.6", "delta": "s1.14", "update": "s1.14", "learning_rate": "u0.16"}


def conv(ch, method, **kw):
    return {"type": "conv", "channels": ch, "kernel": 3, "padding": 1, "method": method, **kw}


def config(layers, *, activation="hardtanh", formats=None, lr_shift=None, feedback=None, rounding=None,
           learning_rate=None):
    n_param = sum(1 for e in layers if e["type"] in ("conv", "dense")) + 1
    d = {"network": {"input": [1, 8, 8], "activation": activation,
                     "layers": layers + ([] if layers[-1]["type"] in ("dense", "flatten") else [{"type": "flatten"}])
                     + [{"type": "dense", "features": 10}]},
         "formats": {**FORMATS, **(formats or {})},
         "training": {"lr_shift": lr_shift or [6] * n_param, "seed": 3},
         "feedback": {"d": 2, "k": 1, "groups": 2, "values": "pm1", "seed": 1, **(feedback or {})}}
    if rounding:
        d["rounding"] = rounding
    if learning_rate is not None:
        d["training"] = {"learning_rate": learning_rate, "seed": 3}
    return cnn_config_from_dict(d)


def digits(n, offset=0):
    return digits_u8(n, offset, (1, 8, 8))


# the two networks of the Verilator runs: a grouped BP conv under a dilated DFA conv, and
# a strided ReLU net with a DFA dense hidden layer, pow2 taps on a dilation-3 lattice
GROUPED = config([conv(4, "dfa"), {"type": "maxpool", "size": 2}, conv(4, "bp", groups=2),
                  {"type": "avgpool", "size": 2}],
                 lr_shift=[8, 4, 4], feedback={"k": 2})
STRIDED = config([conv(4, "bp", stride=2), conv(8, "dfa", groups=2, padding=0), {"type": "flatten"},
                  {"type": "dense", "features": 16, "method": "dfa"}],
                 activation="relu", lr_shift=[7, 9, 9, 6],
                 feedback={"d": 3, "k": 2, "groups": 1, "values": "pow2", "max_shift": 3},
                 rounding={"update": "trunc"})

VARIANTS = {
    "grouped_dfa_maxpool_bp_avgpool": GROUPED,
    "strided_relu_dense_dfa_pow2_d3": STRIDED,
    "no_pool_bp_chain_lr_multiplier": config([conv(3, "bp", padding=0), conv(4, "bp", kernel=2, padding=0)],
                                             learning_rate=0.01),
    "dense_bp_over_maxpool_trunc": config([conv(4, "bp", stride=2, padding=1), {"type": "maxpool", "size": 2},
                                           {"type": "flatten"}, {"type": "dense", "features": 12, "method": "bp"}],
                                          rounding={"forward": "trunc", "backward": "trunc"}),
    # narrow formats: activations, deltas and weights saturate
    "saturating": config([conv(4, "dfa"), {"type": "maxpool", "size": 2}, conv(4, "bp")],
                         formats={"activation": "s1.10", "weight": "s0.10", "bias": "s0.10", "update": "s0.10",
                                  "delta": "s0.10", "error": "s0.14"},
                         lr_shift=[0, 0, 0], feedback={"k": 2, "values": "pow2", "max_shift": 2}),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_engine_matches_golden_model(name):
    cfg = VARIANTS[name]
    X, Y = digits(4, offset=10)
    Y[1] = 11                                # a training sample with a bad label: inferred, rejected
    X[3] = 0                                 # a blank image: every max-pool window is a tie
    train = [True] * 4
    results, params, counters = run_engine(cfg, X, Y, train=train, idle=0.2, backpressure=0.3, seed=1)
    g, want = golden_run(cfg, X, Y, train)
    assert_matches_golden(results, params, want, g.parameters())
    # every layer learnt something (so the comparison above is not of untouched weights)
    for l, ((W, b), (W0, _)) in enumerate(zip(params, initial_cnn_parameters(cfg))):
        assert (W != W0.reshape(W.shape)).any(), f"W{l + 1} never changed"
    assert counters["samples_trained"] == 3 and counters["samples_inferred"] == 1
    assert counters["rejected_labels"] == 1 and counters["samples_received"] == 4
    assert counters["saturation_events"] == sum(g.stats.values())
    if name == "saturating":
        assert counters["saturation_events"] > 0


def test_inference_only_sample_changes_nothing():
    cfg = GROUPED
    X, Y = digits(2, offset=40)
    results, params, counters = run_engine(cfg, X, Y, train=[False, False])
    g, want = golden_run(cfg, X, Y, [False, False])
    assert [r[0] for r in results] == [w[0] for w in want]
    assert [r[2:] for r in results] == [(0, 0), (0, 0)]
    for (W, b), (W0, b0) in zip(params, initial_cnn_parameters(cfg)):
        np.testing.assert_array_equal(W, W0.reshape(W.shape))
        np.testing.assert_array_equal(b, b0)
    assert counters["samples_inferred"] == 2 and counters["samples_trained"] == 0


def test_host_map_refusals_and_writes():
    """Writes land (and read back), and every refused request is answered with error = 1 and
    counted: an index past a layer, a layer past the network, a value outside its format, a
    counter write, a counter past the list."""
    cfg = GROUPED
    f = cfg.formats
    X, Y = digits(1, offset=60)
    top = 2
    n_w = 10 * 16
    fields = cnn_address_layout(cfg)
    layer_past = (0 << (fields["index"] + fields["layer"])) | (3 << fields["index"])
    bad = [
        (cnn_host_address(cfg, "weight", top, 0, n_w), 0, 0),                 # index past the layer
        (cnn_host_address(cfg, "bias", top, 10), 0, 0),                        # bias past the layer
        (layer_past, 0, 0),                                                    # layer 4 of 3
        (cnn_host_address(cfg, "weight", 0, 1, 1), 1, f.weight.max_raw + 1),   # value too large
        (cnn_host_address(cfg, "bias", 1, 1), 1, f.bias.min_raw - 1),          # value too small
        (cnn_host_address(cfg, "counter", counter="samples_trained"), 1, 9),   # counters are read-only
        (cnn_host_address(cfg, "counter", counter=CNN_COUNTERS[-1]) + 1, 0, 0),  # no such counter
    ]
    good = [(cnn_host_address(cfg, "weight", 1, 2, 5), 1, -1234), (cnn_host_address(cfg, "bias", 2, 7), 1, 77)]
    ops = [(0, a, w, d) for a, w, d in bad + good]
    results, params, counters = run_engine(cfg, X, Y, train=[False], host_ops=ops)
    answers = counters["host"]
    assert [e for _, e in answers] == [1] * len(bad) + [0, 0]
    assert counters["rejected_addresses"] == len(bad)
    W0 = initial_cnn_parameters(cfg)
    assert answers[len(bad)][0] == int(W0[1][0].reshape(4, -1)[2, 5])    # a write answers the old value
    assert params[1][0][2, 5] == -1234 and params[2][1][7] == 77
    # the refused value writes changed nothing
    assert params[0][0][1, 1] == W0[0][0].reshape(4, -1)[1, 1] and params[1][1][1] == W0[1][1][1]


def test_engine_refuses_what_it_does_not_implement():
    with pytest.raises(ConfigError, match="rounding.update.*stochastic|stochastic"):
        CNNEngine(GROUPED.with_(rounding_update="stochastic"))
    with pytest.raises(ConfigError, match="feedback.storage"):
        CNNEngine(GROUPED.with_(feedback=dataclasses.replace(GROUPED.feedback, storage="lfsr")))


def test_cycle_count_is_the_schedule():
    """The cycles a training sample takes in the engine are the schedule's count."""
    cfg = GROUPED
    fwd, bwd = schedule(cfg)
    # the schedule's passes are the golden model's loops: a forward conv pass has one term
    # per multiply-accumulate of the convolution
    assert fwd[0].cycles == 4 * 8 * 8 * 1 * 3 * 3
    X, Y = digits(1, offset=80)
    cyc = cnn_cycles(cfg)
    assert cycles_after_load(CNNEngine(cfg), X[0], Y[0]) == cyc["train_sample"] - cyc["load"] - cyc["result"]


def test_max_pool_ties_route_to_the_first_maximum():
    """With conv1's weights and biases zero every window of its max pool is a tie (all 0,
    inside hardtanh's slope), while the input patches under the window differ: BP must route
    the gradient to the first maximum in row-major window order, or conv1's update differs."""
    cfg = VARIANTS["dense_bp_over_maxpool_trunc"]
    params = initial_cnn_parameters(cfg)
    params[0] = (np.zeros_like(params[0][0]), np.zeros_like(params[0][1]))
    X, Y = digits(2, offset=20)
    results, got, _ = run_engine(cfg, X, Y, params=params)
    g = GoldenCNN(cfg, params=params)
    assert [r[0] for r in results] == [g.train_step(x, int(y)) for x, y in zip(X, Y)]
    for l, ((W, b), (Wg, bg)) in enumerate(zip(got, g.parameters())):
        np.testing.assert_array_equal(W, Wg.reshape(W.shape), err_msg=f"W{l + 1}")
        np.testing.assert_array_equal(b, bg, err_msg=f"b{l + 1}")
    assert (got[0][0] != 0).any()


# ---- Verilator: 100 real samples per network ------------------------------------------------------

@pytest.mark.parametrize("name", ["grouped_dfa_maxpool_bp_avgpool", "strided_relu_dense_dfa_pow2_d3"])
def test_verilator_100_digits_bit_exact(name):
    """The scoreboard checks every result as it appears (prediction, output error, flags) and
    the final weights, biases and saturation count read back over the host port; random idle
    cycles on the sample stream and backpressure on the result stream."""
    from dfa_engine.sim.verilator_run import run_training

    cfg = VARIANTS[name]
    X, Y = digits(100, offset=200)
    train = np.ones(100, dtype=bool)
    train[[17, 58]] = False                 # inference only
    Y[33] = 14                              # a bad label: rejected
    s = run_training(cfg, X, Y, train, idle=0.2, backpressure=0.3, tag=f"cnn_{name}")
    assert s["mismatch"] is None and s["params_equal"] and not s["test_failed"]
    c = s["counters"]
    assert c["samples_trained"] == 97 and c["samples_inferred"] == 3 and c["rejected_labels"] == 1
    assert c["saturation_events"] == s["golden_saturation_events"]
    assert s["host_errors"] == 0


def test_verilator_scoreboard_catches_a_difference():
    """The same engine against a golden model with another conv1 learning rate: the
    scoreboard must report the first differing value (so the runs above can fail)."""
    from dfa_engine.sim.verilator_run import run_training

    cfg = VARIANTS["grouped_dfa_maxpool_bp_avgpool"]
    other = cfg.with_(lr_shift=(7,) + tuple(cfg.lr_shift[1:]))
    X, Y = digits(20, offset=300)
    s = run_training(cfg, X, Y, tag="cnn_catch", golden_cfg=other)
    assert s["test_failed"] and s["mismatch"] is not None
