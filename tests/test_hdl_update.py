# amaranth: UnusedElaboratable=no
"""The update unit against the golden model's update, weights and biases, every rounding mode."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from dfa_engine.config import config_from_dict
from dfa_engine.hdl.update import UpdateLanes
from dfa_engine.lfsr import row_streams
from dfa_engine.sim.golden import GoldenModel


def _run(dut, transfers):
    got = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for payload in transfers:
            ctx.set(dut.i.payload, payload)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)
            (out,) = await ctx.tick().sample(dut.o.payload).until(dut.o.valid)
            got.append(([int(v) for v in out.w], int(out.sat_update), int(out.sat_weight)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("rounding,lr,layer", [("nearest", {"lr_shift": 3}, 0), ("trunc", {"lr_shift": 2}, 1),
                                               ("stochastic", {"lr_shift": 4}, 1),
                                               ("nearest", {"learning_rate": 0.3}, 0)])
def test_update_matches_golden(rounding, lr, layer):
    cfg = config_from_dict({"network": {"layers": [6, 5, 4]}, "rounding": {"update": rounding},
                            "formats": {"update": "s0.14"}, "training": lr})
    f = cfg.formats
    rng = np.random.default_rng(3)
    n_out, n_in = cfg.layers[layer + 1], cfg.layers[layer]
    lanes = n_out
    params = [(rng.integers(f.weight.min_raw, f.weight.max_raw + 1, size=(o, i)),
               rng.integers(f.bias.min_raw, f.bias.max_raw + 1, size=o))
              for i, o in zip(cfg.layers[:-1], cfg.layers[1:])]
    # extremes so that dW and W saturate
    params[layer][0][0, :] = f.weight.max_raw
    model = GoldenModel(cfg, params=[(W.copy(), b.copy()) for W, b in params])
    x_fmt = cfg.in_format(layer)
    delta = rng.integers(f.delta.min_raw, f.delta.max_raw + 1, size=n_out)
    delta[0] = f.delta.min_raw
    h = rng.integers(x_fmt.min_raw, x_fmt.max_raw + 1, size=n_in)
    h[1] = 0
    words = row_streams(cfg.rounding_seed, layer, n_out).draws(n_in + 1)
    rand_w, rand_b = words[:, :n_in], words[:, n_in]
    W0, b0 = params[layer]
    model._update(layer, delta, h)
    W1, b1 = model.W[layer], model.b[layer]

    dut = UpdateLanes(cfg, lanes, layer)
    transfers = []
    for j in range(n_in):
        t = {"h": int(h[j]), "w": [int(v) for v in W0[:, j]], "delta": [int(v) for v in delta]}
        if rounding == "stochastic":
            t["rand"] = [int(v) for v in rand_w[:, j]]
        transfers.append(t)
    got = _run(dut, transfers)
    assert np.array_equal(np.array([g[0] for g in got]).T, W1)
    assert sum(g[1] for g in got) == model.stats.get(f"dW{layer + 1}", 0)
    assert sum(g[2] for g in got) == model.stats.get(f"W{layer + 1}", 0)
    assert sum(g[2] for g in got) > 0

    dut_b = UpdateLanes(cfg, lanes, layer, for_bias=True)
    t = {"w": [int(v) for v in b0], "delta": [int(v) for v in delta]}
    if rounding == "stochastic":
        t["rand"] = [int(v) for v in rand_b]
    (w, sat_u, sat_w), = _run(dut_b, [t])
    assert w == list(b1)
    assert sat_u == model.stats.get(f"db{layer + 1}", 0) and sat_w == model.stats.get(f"b{layer + 1}", 0)


@pytest.mark.parametrize("rounding,lr", [("nearest", {"lr_shift": [2, 5]}), ("trunc", {"lr_shift": [6, 1]}),
                                         ("stochastic", {"lr_shift": [3, 7]}),
                                         ("nearest", {"learning_rate": 0.3})])
def test_shared_unit_matches_per_layer_golden(rounding, lr):
    """One unit for both layers (different input formats and learning-rate shifts): each
    transfer names its layer, and every result equals that layer's golden update."""
    cfg = config_from_dict({"network": {"layers": [5, 4, 3]}, "rounding": {"update": rounding},
                            "formats": {"update": "s0.14", "input": "u0.8", "activation": "s3.10"},
                            "training": lr})
    f = cfg.formats
    rng = np.random.default_rng(11)
    lanes = 4
    params = [(rng.integers(f.weight.min_raw // 2, f.weight.max_raw // 2, size=(o, i)),
               rng.integers(f.bias.min_raw // 2, f.bias.max_raw // 2, size=o))
              for i, o in zip(cfg.layers[:-1], cfg.layers[1:])]
    model = GoldenModel(cfg, params=[(W.copy(), b.copy()) for W, b in params])
    dut = UpdateLanes(cfg, lanes, (0, 1))
    dut_b = UpdateLanes(cfg, lanes, (0, 1), for_bias=True)
    transfers, bias_transfers, expect_w, expect_b = [], [], [], []
    for layer in (1, 0):      # out of order on purpose: the payload's layer field decides
        n_out, n_in = cfg.layers[layer + 1], cfg.layers[layer]
        x_fmt = cfg.in_format(layer)
        delta = rng.integers(f.delta.min_raw, f.delta.max_raw + 1, size=n_out)
        h = rng.integers(x_fmt.min_raw, x_fmt.max_raw + 1, size=n_in)
        words = row_streams(cfg.rounding_seed, layer, n_out).draws(n_in + 1)
        W0, b0 = params[layer]
        model._update(layer, delta, h)
        pad = [0] * (lanes - n_out)
        for j in range(n_in):
            t = {"h": int(h[j]), "w": [int(v) for v in W0[:, j]] + pad, "delta": [int(v) for v in delta] + pad,
                 "layer": layer}
            if rounding == "stochastic":
                t["rand"] = [int(v) for v in words[:, j]] + pad
            transfers.append(t)
        tb = {"w": [int(v) for v in b0] + pad, "delta": [int(v) for v in delta] + pad, "layer": layer}
        if rounding == "stochastic":
            tb["rand"] = [int(v) for v in words[:, n_in]] + pad
        bias_transfers.append(tb)
        expect_w.append(model.W[layer].copy())
        expect_b.append(list(model.b[layer]))
    got = _run(dut, transfers)
    n1 = cfg.layers[1]
    got_l1 = np.array([g[0] for g in got[:n1]]).T[:cfg.layers[2]]
    got_l0 = np.array([g[0] for g in got[n1:]]).T[:cfg.layers[1]]
    assert np.array_equal(got_l1, expect_w[0]) and np.array_equal(got_l0, expect_w[1])
    got_b = _run(dut_b, bias_transfers)
    assert got_b[0][0][:cfg.layers[2]] == expect_b[0] and got_b[1][0][:cfg.layers[1]] == expect_b[1]


def test_shared_unit_rejects_bad_layers():
    cfg = config_from_dict({"network": {"layers": [5, 4, 3]}})
    with pytest.raises(ValueError, match=r"^Layer must be 0\.\.1, not 2$"):
        UpdateLanes(cfg, 2, (0, 2))
    with pytest.raises(ValueError, match=r"^Layer list must not be empty$"):
        UpdateLanes(cfg, 2, ())
