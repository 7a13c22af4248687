"""The float reference (dfa_engine.nn): DFA markers, hybrid, alignment, the NumPy fast path,
and agreement with the bit-exact golden model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfa_engine.config import FeedbackConfig, default_config
from dfa_engine.feedback import feedback_matrix, initial_parameters
from dfa_engine.nn import (DFA, MLP, DFALayer, NumpyMLP, alignment, build_mlp, cfg_learning_rates, evaluate,
                           sgd_train, sparse_feedback)
from dfa_engine.sim.golden import GoldenModel


def _data(n, n_in, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, n_in)), rng.integers(0, classes, n)


def _mlp_with(Ws, bs, methods, feedback, activation="relu"):
    layers = [Ws[0].shape[1]] + [W.shape[0] for W in Ws]
    m = MLP(layers, activation, methods, feedback=feedback, dtype=torch.float64)
    with torch.no_grad():
        for lin, W, b in zip(m.linears, Ws, bs):
            lin.weight.copy_(torch.as_tensor(W))
            lin.bias.copy_(torch.as_tensor(b))
    return m


def _random_params(layers, seed=1):
    rng = np.random.default_rng(seed)
    Ws = [rng.uniform(-1, 1, (b, a)) / np.sqrt(a) for a, b in zip(layers[:-1], layers[1:])]
    bs = [rng.uniform(-0.1, 0.1, b) for b in layers[1:]]
    return Ws, bs


@pytest.mark.parametrize("activation", ["relu", "hardtanh"])
def test_marker_backward_is_feedback_times_error_masked(activation):
    layers = [12, 7, 5, 4]
    Ws, bs = _random_params(layers)
    rng = np.random.default_rng(2)
    B = [rng.uniform(-1, 1, (7, 4)), rng.uniform(-1, 1, (5, 4))]
    m = _mlp_with(Ws, bs, ["dfa", "dfa"], B, activation)
    x, t = _data(3, 12, 4)
    out = m(torch.as_tensor(x))
    F.cross_entropy(out, torch.as_tensor(t)).backward()
    # Manual: e = (softmax - onehot) / batch; delta_l = (e B_l^T) * f'(a_l); dW_l = delta_l^T h_{l-1}.
    h, pre = [x], []
    for W, b in zip(Ws[:-1], bs[:-1]):
        a = h[-1] @ W.T + b
        pre.append(a)
        h.append(np.maximum(a, 0) if activation == "relu" else np.clip(a, -1, 1))
    y = h[-1] @ Ws[-1].T + bs[-1]
    p = np.exp(y - y.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = (p - np.eye(4)[t]) / len(x)
    for l in range(2):
        mask = pre[l] > 0 if activation == "relu" else (pre[l] > -1) & (pre[l] < 1)
        delta = (e @ B[l].T) * mask
        np.testing.assert_allclose(m.linears[l].weight.grad.numpy(), delta.T @ h[l], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(m.linears[l].bias.grad.numpy(), delta.sum(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.linears[2].weight.grad.numpy(), e.T @ h[2], rtol=1e-10, atol=1e-12)


def test_hybrid_bp_layers_get_exact_gradients():
    layers = [10, 8, 6, 5, 3]
    Ws, bs = _random_params(layers)
    rng = np.random.default_rng(3)
    fb = [rng.uniform(-1, 1, (8, 3)), rng.uniform(-1, 1, (6, 3)), None]
    m = _mlp_with(Ws, bs, ["dfa", "dfa", "bp"], fb)
    x, t = _data(4, 10, 3)
    X, T = torch.as_tensor(x), torch.as_tensor(t)
    F.cross_entropy(m(X), T).backward()
    hybrid = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    with m.dfa.disabled():
        F.cross_entropy(m(X), T).backward()
    bp = {n: p.grad.clone() for n, p in m.named_parameters()}
    for name in ("linears.2.weight", "linears.2.bias", "linears.3.weight", "linears.3.bias"):
        torch.testing.assert_close(hybrid[name], bp[name], rtol=0, atol=0)
    assert not torch.allclose(hybrid["linears.0.weight"], bp["linears.0.weight"])
    # A BP layer *below* a DFA layer back-propagates that layer's DFA delta (as the golden model does).
    m2 = _mlp_with(Ws, bs, ["bp", "dfa", "dfa"], [None, fb[1], rng.uniform(-1, 1, (5, 3))])
    out = m2(X)
    F.cross_entropy(out, T).backward()
    h1 = torch.relu(X @ torch.as_tensor(Ws[0]).T + torch.as_tensor(bs[0]))
    a2 = h1 @ torch.as_tensor(Ws[1]).T + torch.as_tensor(bs[1])
    e = (torch.softmax(out.detach(), 1) - F.one_hot(T, 3)) / len(x)
    delta2 = (e @ torch.as_tensor(fb[1]).T) * (a2 > 0)
    delta1 = (delta2 @ torch.as_tensor(Ws[1])) * (h1 > 0)
    torch.testing.assert_close(m2.linears[0].weight.grad, delta1.T @ X)


def test_alignment():
    layers = [10, 8, 6, 3]
    Ws, bs = _random_params(layers)
    x, t = _data(16, 10, 3)
    X, T = torch.as_tensor(x), torch.as_tensor(t)
    bp = _mlp_with(Ws, bs, ["bp", "bp"], "dense")
    angles = alignment(bp, bp.dfa, X, T)
    assert set(angles) == {n for n, _ in bp.named_parameters()}
    assert all(abs(a) < 1e-5 for a in angles.values())
    dfa = _mlp_with(Ws, bs, ["dfa", "dfa"], "sparse")
    dfa.linears[0].weight.grad = torch.ones_like(dfa.linears[0].weight)
    angles = alignment(dfa, dfa.dfa, X, T)
    assert angles["linears.2.weight"] < 1e-5          # the output layer is always BP
    assert angles["linears.0.weight"] > 1 and angles["linears.1.weight"] > 1
    assert torch.all(dfa.linears[0].weight.grad == 1)  # .grad restored


def test_user_model_with_generated_feedback_and_conv_marker():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3, padding=1)
            self.fc = nn.Linear(3 * 4 * 4, 5)
            self.m = DFALayer()
            self.dfa = DFA([self.m], feedback="sparse", k=2, scale=0.5, seed=3)

        def forward(self, x):
            h = self.m(torch.relu(self.conv(x)))
            return self.dfa(self.fc(h.flatten(1)))

    net = Net()
    x = torch.randn(2, 1, 4, 4)
    t = torch.tensor([1, 4])
    out = net(x)
    F.cross_entropy(out, t).backward()
    B = net.dfa.feedback(0)
    assert B.shape == (48, 5)
    assert np.all((B != 0).sum(1) == 2) and set(np.unique(B)) <= {-0.5, 0.0, 0.5}
    # The conv layer's gradient is that of a surrogate loss <h, g> with g = B e reshaped.
    e = (torch.softmax(out.detach(), 1) - F.one_hot(t, 5)) / 2
    g = (e @ torch.as_tensor(B, dtype=torch.float32).T).reshape(2, 3, 4, 4)
    conv = nn.Conv2d(1, 3, 3, padding=1)
    conv.load_state_dict(net.conv.state_dict())
    (torch.relu(conv(x)) * g).sum().backward()
    torch.testing.assert_close(net.conv.weight.grad, conv.weight.grad)
    # No-grad forward does not touch the hooks.
    with torch.no_grad():
        net(x)


def test_sparse_feedback_generator():
    B = sparse_feedback(50, 10, k=3, rng=1)
    assert np.all((B != 0).sum(1) == 3) and set(np.unique(B)) == {-1.0, 0.0, 1.0}


def test_build_mlp_uses_engine_parameters_and_feedback():
    cfg = default_config().with_(layers=(20, 9, 7, 4), methods=("dfa", "bp"))
    m = build_mlp(cfg)
    for lin, (W, b) in zip(m.linears, initial_parameters(cfg)):
        np.testing.assert_array_equal(lin.weight.detach().numpy(), W * 2.0 ** -14)
        np.testing.assert_array_equal(lin.bias.detach().numpy(), b * 2.0 ** -14)
    assert len(m.markers) == 1
    np.testing.assert_array_equal(m.dfa.feedback(0), feedback_matrix(cfg, 0) * 2.0 ** -6)


@pytest.mark.parametrize("methods", [("dfa", "dfa"), ("bp", "bp"), ("dfa", "bp"), ("bp", "dfa")])
def test_numpy_fast_path_matches_torch(methods):
    cfg = default_config().with_(layers=(30, 16, 12, 10), methods=methods, lr_shift=(4, 5, 3),
                                 feedback=FeedbackConfig(kind="dense", values="fixed", seed=1))
    x, t = _data(40, 30)
    torch_model = build_mlp(cfg, dtype=torch.float64)
    np_model = NumpyMLP.from_config(cfg)
    acc_t = sgd_train(torch_model, x, t, cfg_learning_rates(cfg), epochs=2)
    acc_n = (np_model.train_epoch(x, t), np_model.train_epoch(x, t))[1]
    assert acc_t == acc_n
    for lin, W, b in zip(torch_model.linears, np_model.W, np_model.b):
        np.testing.assert_allclose(lin.weight.detach().numpy(), W, rtol=0, atol=1e-12)
        np.testing.assert_allclose(lin.bias.detach().numpy(), b, rtol=0, atol=1e-12)
    assert evaluate(torch_model, x, t) == np_model.evaluate(x, t)


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_float_reference_tracks_golden_model(kind):
    """Same init, B, lr and samples: the fixed-point weights stay within a few LSBs of the
    float twin's step after step, as long as no ReLU mask flips (a pre-activation within
    quantization error of 0 switches a whole row's update; that is expected, not an error).
    Dense feedback (entries up to +-2) gets a delta format with 3 integer bits so that
    ``g = B e`` does not saturate (with the default s1.14 it does: see the study)."""
    from dataclasses import replace

    from dfa_engine.data import load_dataset
    from dfa_engine.fixed import FixedFormat

    fb = (FeedbackConfig(kind="dense", values="fixed", seed=1) if kind == "dense"
          else FeedbackConfig(kind="sparse", k=1, values="pm1", seed=1))
    cfg = default_config().with_(layers=(64, 32, 10), feedback=fb, lr_shift=(6, 6), activation="relu",
                                 softmax_table_frac_bits=8, softmax_table_size=4096)
    cfg = cfg.with_(formats=replace(cfg.formats, delta=FixedFormat.parse("s3.12")))
    ds = load_dataset("digits")
    X = cfg.formats.input.from_float(ds.x_train[:12])
    x = cfg.formats.input.to_float(X)
    golden, twin = GoldenModel(cfg), NumpyMLP.from_config(cfg)
    for i in range(len(X)):
        _, _, masks = golden.forward(X[i])
        assert np.array_equal(masks[0], twin.W[0] @ x[i] + twin.b[0] > 0)
        assert golden.train_step(X[i], int(ds.y_train[i])) == twin.train_step(x[i], int(ds.y_train[i]))
        for (Wg, bg), Wf, bf in zip(golden.parameters(), twin.W, twin.b):
            assert np.abs(Wg * 2.0 ** -14 - Wf).max() < 4e-4
            assert np.abs(bg * 2.0 ** -14 - bf).max() < 4e-4
    assert golden.stats == {}
