"""BP in fixed point agrees with float64 autograd within the bound of docs/numerics.md, section 11."""

import math

import numpy as np
import pytest
import torch

from dfa_engine.config import config_from_dict
from dfa_engine.sim.golden import GoldenModel


def _config(layers, activation, lr_shift):
    return config_from_dict({
        "network": {"layers": layers, "activation": activation, "method": "bp"},
        "training": {"lr_shift": lr_shift},
        "feedback": {"kind": "dense", "values": "fixed"},
        # A fine exp table keeps the softmax term of the bound small enough to be informative.
        "softmax": {"table_frac_bits": 8, "table_size": 4096},
    })


def _float_step(params, x, label, activation, lr):
    """One SGD step in float64 autograd; returns updated params, pre-activations, masks."""
    Ws = [torch.tensor(W, dtype=torch.float64, requires_grad=True) for W, _ in params]
    bs = [torch.tensor(b, dtype=torch.float64, requires_grad=True) for _, b in params]
    h = torch.tensor(x, dtype=torch.float64)
    pres = []
    for l, (W, b) in enumerate(zip(Ws, bs)):
        a = W @ h + b
        a.retain_grad()
        pres.append(a)
        if l < len(Ws) - 1:
            h = torch.relu(a) if activation == "relu" else torch.clamp(a, -1.0, 1.0)
    loss = torch.nn.functional.cross_entropy(a[None], torch.tensor([label]))
    loss.backward()
    new = [((W - lr * W.grad).detach().numpy(), (b - lr * b.grad).detach().numpy()) for W, b in zip(Ws, bs)]
    return new, [a.detach().numpy() for a in pres], [a.grad.numpy() for a in pres]


def _bound(cfg, params, pre_float, delta_float, x_float, lr):
    """Per-element bounds of section 11 for every updated W_l and b_l."""
    f = cfg.formats
    ua, ud, ue, uw, ub = (2.0 ** -fmt.frac_bits for fmt in (f.activation, f.delta, f.error, f.weight, f.bias))
    Ws = [W for W, _ in params]
    rownorm = [np.abs(W).sum(axis=1).max() for W in Ws]
    colnorm = [np.abs(W).sum(axis=0).max() for W in Ws]
    L = len(Ws)
    eps_a = []
    for l in range(L):
        eps_a.append(ua / 2 if l == 0 else rownorm[l] * eps_a[-1] + ua / 2)
    t, N, C = cfg.softmax_table_frac_bits, cfg.softmax_table_size, cfg.n_classes
    rho = max(0.5, 2 ** 15 * math.exp(-N / 2 ** t))
    eps_e = (eps_a[-1] + 2.0 ** -t) / 2 + (C + 1) * rho * 2.0 ** -15 + 2.0 ** -16 + ue / 2
    eps_d = [0.0] * L
    eps_d[L - 1] = eps_e + (ud / 2 if f.error.frac_bits != f.delta.frac_bits else 0.0)
    for l in range(L - 2, -1, -1):
        eps_d[l] = colnorm[l + 1] * eps_d[l + 1] + ud / 2
    # |delta| and |h| of the float run bound the magnitudes (plus their own errors).
    hs = [x_float] + [np.maximum(a, 0) if cfg.activation == "relu" else np.clip(a, -1, 1) for a in pre_float[:-1]]
    eps_h = [0.0] + eps_a[:-1]
    bounds = []
    for l in range(L):
        # |delta_fixed| <= |delta_float| + eps_d: the magnitude term of the update bound.
        dmag = (np.abs(delta_float[l]) + eps_d[l])[:, None]
        dW = lr * (eps_d[l] * np.abs(hs[l])[None, :] + dmag * eps_h[l] + eps_d[l] * eps_h[l]) + uw / 2
        db = lr * eps_d[l] + ub / 2
        bounds.append((dW, db))
    return bounds


CASES = [([6, 5, 4], "relu", 2), ([7, 6, 5, 3], "relu", 3), ([6, 5, 4], "hardtanh", 2), ([8, 7, 6, 5, 4], "hardtanh", 3)]


@pytest.mark.parametrize("layers,activation,lr_shift", CASES)
def test_bp_step_within_bound(layers, activation, lr_shift):
    cfg = _config(layers, activation, lr_shift)
    f = cfg.formats
    rng = np.random.default_rng(sum(layers))
    checked = 0
    largest_change = 0.0
    informative = 0
    for trial in range(40):
        params = []
        for n_in, n_out in zip(layers[:-1], layers[1:]):
            W = f.weight.from_float(rng.uniform(-0.5, 0.5, size=(n_out, n_in)))
            b = f.bias.from_float(rng.uniform(-0.3, 0.3, size=n_out))
            params.append((W, b))
        x = rng.integers(0, 256, size=layers[0])
        label = int(rng.integers(0, layers[-1]))
        fparams = [(f.weight.to_float(W), f.bias.to_float(b)) for W, b in params]
        lr = 2.0 ** -lr_shift
        new_float, pre_float, delta_float = _float_step(fparams, f.input.to_float(x), label, activation, lr)
        model = GoldenModel(cfg, params=params)
        pre_fixed = model.forward(x)[0]
        # The bound assumes identical derivative masks; skip draws where a pre-activation
        # sits within the forward error of a kink.
        if any(np.min(np.abs(np.abs(a) - (0 if activation == "relu" else 1))) < 0.01 for a in pre_float[:-1]):
            continue
        model.train_step(x, label)
        assert model.stats == {}, "the bound assumes no saturation"
        bounds = _bound(cfg, fparams, pre_float, delta_float, f.input.to_float(x), lr)
        for l, ((Wf, bf), (Wq, bq), (eW, eb)) in enumerate(zip(new_float, model.parameters(), bounds)):
            errW = np.abs(f.weight.to_float(Wq) - Wf)
            errb = np.abs(f.bias.to_float(bq) - bf)
            assert np.all(errW <= eW), f"layer {l + 1}: W error {errW.max():.3g} > bound {eW[np.unravel_index(errW.argmax(), errW.shape)]:.3g}"
            assert np.all(errb <= eb), f"layer {l + 1}: b error {errb.max():.3g} > bound {eb:.3g}"
            largest_change = max(largest_change, np.abs(Wf - fparams[l][0]).max())
        # The bound must be tighter than the update itself, or it proves nothing: checked
        # on the output layer, whose update is never masked out.
        out_change = np.abs(new_float[-1][0] - fparams[-1][0]).max()
        if out_change > 0:  # (all hidden ReLUs off: only the biases move)
            assert np.median(bounds[-1][0]) < 0.5 * out_change
            informative += 1
        checked += 1
    assert checked >= 10 and informative >= 5
    assert largest_change > 0
