"""Float RNN reference (dfa_engine.rnn): manual BPTT = autograd, the DFA/hybrid/module formulas
against autograd of surrogate losses and explicit loops, the feedback = the project's generator,
no backward pass through time for DFA, the cost counters, a short training run."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dfa_engine.feedback import feedback_matrix, sparse_feedback
from dfa_engine.rnn import RNN, RNNConfig, RNNFeedback, adding_task, costs, feedback_engine_config

torch.set_num_threads(1)
N, T, I, H, O = 3, 6, 5, 7, 4


def _data(loss="xent", readout="last", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, T, I, generator=g)
    if loss == "xent":
        y = torch.randint(0, O, (N,), generator=g)
    else:
        y = torch.randn(N, O, generator=g) if readout == "last" else torch.randn(N, T, O, generator=g)
    return x, y


def _net(**kw):
    fb = kw.pop("fb", {})
    return RNN(RNNConfig(n_in=I, hidden=H, n_out=O, feedback=RNNFeedback(**fb), **kw))


def _autograd_forward(net, x, detach_at=()):
    """Returns (params requiring grad, list of a_t, list of h_t (h[0] = 0), outputs per step)."""
    ps = {k: v.clone().requires_grad_(True) for k, v in net.params().items()}
    f = torch.tanh if net.cfg.activation == "tanh" else F.hardtanh
    alpha = 2.0 ** -net.leak_shift.to(torch.float32)
    h, hs, As, ys = torch.zeros(N, H), [torch.zeros(N, H)], [], []
    for t in range(T):
        if t in detach_at:
            h = h.detach()
        a = x[:, t] @ ps["W_xh"].T + h @ ps["W_hh"].T + ps["b_h"]
        h = (1 - alpha) * h + alpha * f(a)
        As.append(a), hs.append(h), ys.append(h @ ps["W_hy"].T + ps["b_y"])
    return ps, As, hs, ys


def _loss(net, ys, y):
    outs = ys if net.cfg.readout == "every" else ys[-1:]
    if net.cfg.loss == "xent":
        return torch.stack([F.cross_entropy(o, y) for o in outs]).mean()
    tg = [y[:, t] for t in range(T)] if y.dim() == 3 else [y]
    return torch.stack([0.5 * ((o - t) ** 2).sum(-1).mean() for o, t in zip(outs, tg)]).mean()


@pytest.mark.parametrize("readout", ["last", "every"])
@pytest.mark.parametrize("act", ["tanh", "hardtanh"])
@pytest.mark.parametrize("loss", ["xent", "mse"])
@pytest.mark.parametrize("cell", ["elman", "leaky"])
def test_bptt_equals_autograd(readout, act, loss, cell):
    x, y = _data(loss, readout)
    net = _net(method="bptt", readout=readout, activation=act, loss=loss, cell=cell, leak_max_shift=3)
    lval, _, _, _, grads = net.gradients(x, y)
    ps, _, _, ys = _autograd_forward(net, x)
    L = _loss(net, ys, y)
    L.backward()
    assert abs(lval - float(L.detach())) < 1e-5
    for k, p in ps.items():
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("cell", ["elman", "leaky"])
def test_truncated_bptt_equals_autograd_with_detach(k, cell):
    """Last-step readout: TBPTT(k) = autograd with the state detached before step T - k."""
    x, y = _data()
    net = _net(method="tbptt", bptt_steps=k, cell=cell, leak_max_shift=3)
    _, _, _, delta, grads = net.gradients(x, y)
    ps, _, _, ys = _autograd_forward(net, x, detach_at=(T - k,))
    F.cross_entropy(ys[-1], y).backward()
    for name in ("W_xh", "W_hh", "b_h", "W_hy"):
        torch.testing.assert_close(grads[name], ps[name].grad, rtol=1e-5, atol=1e-6, msg=name)
    assert torch.all(delta[:T - k] == 0) and torch.all(delta[T - k:].abs().sum((1, 2)) > 0)
    # every-step readout with k >= T is full BPTT
    a = _net(method="tbptt", bptt_steps=T, readout="every").gradients(x, y)[4]
    b = _net(method="bptt", readout="every").gradients(x, y)[4]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window", ["all", "last", 3])
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_dfa_update_equals_written_formula(window, kind):
    """delta_t = (B e_T) * f'(a_t) for the steps of the window; dW_hh = sum_t delta_t h_{t-1}^T,
    dW_xh = sum_t delta_t x_t^T (explicit loops in float64 NumPy)."""
    x, y = _data()
    net = _net(method="dfa" if kind == "dense" else "dfa_sparse", window=window,
               fb=dict(kind=kind, k=2, values="pow2", max_shift=2, scale=0.5))
    _, cache, E, _, grads = net.gradients(x, y)
    B = net.feedback_dense().double().numpy()
    Wxh, Whh, b = (net.params()[n].double().numpy() for n in ("W_xh", "W_hh", "b_h"))
    Why, by = net.W_hy.double().numpy(), net.b_y.double().numpy()
    X = x.double().numpy()
    h = np.zeros((N, H))
    hs, As = [h], []
    for t in range(T):
        a = X[:, t] @ Wxh.T + h @ Whh.T + b
        h = np.tanh(a)
        hs.append(h), As.append(a)
    z = hs[-1] @ Why.T + by
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = (p - np.eye(O)[y.numpy()]) / N
    w = {"all": T, "last": 1}.get(window, window)
    dWhh, dWxh = np.zeros((H, H)), np.zeros((H, I))
    for t in range(T - w, T):
        delta = (e @ B.T) * (1 - np.tanh(As[t]) ** 2)
        dWhh += delta.T @ hs[t]
        dWxh += delta.T @ X[:, t]
    np.testing.assert_allclose(grads["W_hh"].numpy(), dWhh, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(grads["W_xh"].numpy(), dWxh, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(grads["W_hy"].numpy(), e.T @ hs[-1], rtol=1e-4, atol=1e-7)


def _surrogate_reference(net, x, y, true_parts, dfa_steps):
    """Autograd of a surrogate: sum over (chunk start, end, vector) of <h_end, v> with the state
    detached at the chunk start, plus sum over DFA steps t of <f(a_t), B e_T> with h_{t-1} detached."""
    grads = {}
    ps, _, _, ys = _autograd_forward(net, x)
    F.cross_entropy(ys[-1], y).backward()
    e = ((torch.softmax(ys[-1].detach(), 1) - F.one_hot(y, O)) / N)
    grads["W_hy"] = ps["W_hy"].grad
    total = {k: torch.zeros_like(v) for k, v in net.params().items() if k in ("W_xh", "W_hh", "b_h")}
    for start, end, v in true_parts(e):
        ps2, _, hs, _ = _autograd_forward(net, x, detach_at=(start,))
        (hs[end + 1] * v).sum().backward()
        for k in total:
            total[k] += ps2[k].grad
    Be = net.project(e)
    for t in dfa_steps:
        ps2, _, hs, _ = _autograd_forward(net, x, detach_at=(t,))
        (hs[t + 1] * Be).sum().backward()
        for k in total:
            total[k] += ps2[k].grad
    grads.update(total)
    return grads


@pytest.mark.parametrize("k", [1, 3])
def test_hybrid_equals_surrogate(k):
    x, y = _data()
    net = _net(method="hybrid", bptt_steps=k, fb=dict(kind="sparse", k=1, scale=0.7))
    grads = net.gradients(x, y)[4]
    ref = _surrogate_reference(net, x, y, lambda e: [(T - k, T - 1, e @ net.W_hy)], range(T - k))
    for name, g in ref.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_module_equals_surrogate():
    """Chunks of 2 steps ending at T-1: true BPTT inside the last chunk, B e_T injected at the
    end of every earlier chunk and propagated inside that chunk only."""
    x, y = _data()
    net = _net(method="module", bptt_steps=2, fb=dict(kind="dense", scale=0.5))
    grads = net.gradients(x, y)[4]

    def parts(e):
        out = [(T - 2, T - 1, e @ net.W_hy)]
        for end in range(T - 3, -1, -2):
            out.append((max(0, end - 1), end, net.project(e)))
        return out

    ref = _surrogate_reference(net, x, y, parts, [])
    for name, g in ref.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("method,kw", [("dfa", {}), ("dfa_sparse", {}), ("hybrid", {"bptt_steps": 1}),
                                       ("dfa", {"fb": {"kind": "output"}}),
                                       ("dfa", {"cell": "leaky", "window": "trace"}),
                                       ("dfa_sparse", {"cell": "leaky", "window": "trace", "readout": "every"})])
def test_dfa_has_no_backward_pass_through_time(method, kw):
    """Given the forward pass, the deltas of these methods do not depend on W_hh (no W_hh^T)."""
    x, y = _data()
    net = _net(method=method, **kw)
    _, cache, E, delta, _ = net.gradients(x, y)
    net.W_hh.mul_(-5.0).add_(1.0)
    torch.testing.assert_close(net.hidden_deltas(cache, E), delta)
    assert not costs(net.cfg, T)["backward_through_time"]
    bp = _net(method="bptt")
    _, cache, E, d1, _ = bp.gradients(x, y)
    bp.W_hh.mul_(-5.0)
    assert not torch.allclose(bp.hidden_deltas(cache, E), d1)
    assert costs(bp.cfg, T)["backward_through_time"]


def _forward_eligibility_traces(net, x, E):
    """e-prop written forward in time, independently of the model's closed form: per weight a
    trace ``eps_t = keep * eps_{t-1} + alpha * f'(a_t) * z_t`` (``z`` = ``x_t``, ``h_{t-1}`` or 1),
    and at every step with an error ``grad += (B e_t) * eps_t``."""
    alpha = 2.0 ** -net.leak_shift.to(torch.float32)
    keep = 1 - alpha
    B = net.feedback_dense()
    f = torch.tanh if net.cfg.activation == "tanh" else F.hardtanh
    h = torch.zeros(N, H)
    ex, eh, eb = torch.zeros(N, H, I), torch.zeros(N, H, H), torch.zeros(N, H)
    gx, gh, gb = torch.zeros(H, I), torch.zeros(H, H), torch.zeros(H)
    for t in range(T):
        a = x[:, t] @ net.W_xh.T + h @ net.W_hh.T + net.b_h
        fa = f(a)
        fp = 1 - fa * fa if net.cfg.activation == "tanh" else ((a > -1) & (a < 1)).float()
        af = alpha * fp
        ex = keep[:, None] * ex + af[..., None] * x[:, t, None, :]
        eh = keep[:, None] * eh + af[..., None] * h[:, None, :]
        eb = keep * eb + af
        h = h + alpha * (fa - h)
        L = E[t] @ B.T
        gx += torch.einsum("nh,nhi->hi", L, ex)
        gh += torch.einsum("nh,nhj->hj", L, eh)
        gb += (L * eb).sum(0)
    return {"W_xh": gx, "W_hh": gh, "b_h": gb}


@pytest.mark.parametrize("readout", ["last", "every"])
@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("act", ["tanh", "hardtanh"])
def test_trace_window_equals_forward_eligibility_traces(readout, kind, act):
    """window = "trace" on the leaky cell is e-prop with the DFA projection as learning signal:
    the gradients equal traces carried forward in time (no backward pass of any kind)."""
    x, y = _data(readout=readout)
    net = _net(method="dfa", window="trace", cell="leaky", leak_max_shift=3, readout=readout,
               activation=act, fb={"kind": kind, "k": 2, "scale": 0.5})
    assert len(set(net.leak_shift.tolist())) > 1          # several time constants in play
    _, _, E, delta, grads = net.gradients(x, y)
    ref = _forward_eligibility_traces(net, x, E)
    for name, g in ref.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=name)
    assert torch.all(delta[0].abs().sum() > 0)          # the first step gets credit through the leak
    # on the Elman cell the trace is the neuron's own step only: the "last" window
    a = _net(method="dfa", window="trace", readout=readout, fb={"kind": kind, "k": 2}).gradients(x, y)[4]
    b = _net(method="dfa", window="last", readout=readout, fb={"kind": kind, "k": 2}).gradients(x, y)[4]
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_leaky_cell_shares_the_elman_start_and_keeps_its_state():
    elman, leaky = _net(), _net(cell="leaky", leak_max_shift=4)
    for name, p in elman.params().items():
        assert torch.equal(p, leaky.params()[name]), name
    assert set(leaky.leak_shift.tolist()) <= set(range(5)) and len(set(leaky.leak_shift.tolist())) > 1
    x, _ = _data()
    h_e, h_l = elman.forward(x)["h"], leaky.forward(x)["h"]
    alpha = 2.0 ** -leaky.leak_shift.to(torch.float32)
    fa = leaky.forward(x)["fa"]
    torch.testing.assert_close(h_l[1:], h_l[:-1] + alpha * (fa - h_l[:-1]))
    assert not torch.allclose(h_e, h_l) and h_l.abs().max() < 1
    with pytest.raises(ValueError, match="cell must be elman or leaky"):
        _net(cell="gru")
    with pytest.raises(ValueError, match="leak_max_shift 16 is out of range"):
        _net(cell="leaky", leak_max_shift=16)
    with pytest.raises(ValueError, match="window 'trace' is a DFA window"):
        _net(method="bptt", window="trace")


@pytest.mark.parametrize("values", ["pm1", "pow2"])
def test_feedback_is_the_project_generator(values):
    cfg = RNNConfig(n_in=28, hidden=64, n_out=10, method="dfa_sparse",
                    feedback=RNNFeedback(kind="sparse", k=3, values=values, max_shift=3, scale=0.25, seed=5))
    net = RNN(cfg)
    B = net.feedback_dense().numpy()
    assert np.all((B != 0).sum(1) == 3)
    ecfg = feedback_engine_config(cfg)
    sp = sparse_feedback(ecfg, 0)
    np.testing.assert_array_equal(net.sparse.index.numpy(), sp.index)
    one = 1 << ecfg.formats.feedback.frac_bits
    np.testing.assert_allclose(B, feedback_matrix(ecfg, 0) / one * 0.25)
    if values == "pm1":
        assert set(np.unique(np.abs(B[B != 0]))) == {0.25}
    e = torch.randn(5, 10)
    torch.testing.assert_close(net.project(e), e @ torch.as_tensor(B).T)     # gather-and-add = B e
    dense = RNN(cfg.with_(method="dfa", feedback=RNNFeedback(kind="dense", scale=2.0, seed=5)))
    dcfg = feedback_engine_config(dense.cfg)
    np.testing.assert_allclose(dense.B.numpy(), dcfg.formats.feedback.to_float(feedback_matrix(dcfg, 0)) * 2.0,
                               rtol=1e-6)
    assert str(dcfg.formats.feedback) == "s0.7"


def test_costs_by_hand():
    # H=7, I=5, O=4, T=6, last readout
    c = costs(RNNConfig(n_in=I, hidden=H, n_out=O, method="bptt"), T)
    assert c["forward_macs"] == T * H * (I + H) + O * H
    assert c["error_macs"] == O * H + (T - 1) * H * H and c["update_macs"] == T * H * (I + H) + O * H
    assert c["feedback_storage_bits"] == 0
    c = costs(RNNConfig(n_in=I, hidden=H, n_out=O, method="tbptt", bptt_steps=3), T)
    assert c["error_macs"] == O * H + 2 * H * H and c["update_macs"] == 3 * H * (I + H) + O * H
    c = costs(RNNConfig(n_in=I, hidden=H, n_out=O, method="dfa", feedback=RNNFeedback(bits=8)), T)
    assert c["error_macs"] == H * O and c["feedback_storage_bits"] == H * O * 8
    c = costs(RNNConfig(n_in=I, hidden=H, n_out=O, method="dfa_sparse", window="last",
                        feedback=RNNFeedback(kind="sparse", k=2)), T)
    assert c["error_macs"] == H * 2 and c["update_macs"] == H * (I + H) + O * H
    assert c["feedback_storage_bits"] == H * 2 * (2 + 1)          # 4 classes: 2 index bits + sign
    c = costs(RNNConfig(n_in=I, hidden=H, n_out=O, method="hybrid", bptt_steps=1,
                        feedback=RNNFeedback(kind="sparse", k=1, storage="lfsr")), T)
    assert c["error_macs"] == O * H + H and c["feedback_storage_bits"] == 0
    c = costs(RNNConfig(n_in=I, hidden=H, n_out=O, method="module", bptt_steps=4,
                        feedback=RNNFeedback(kind="sparse", k=1)), T)
    assert c["error_macs"] == O * H + (T - 2) * H * H + H          # chunks [0,1], [2..5]
    c = costs(RNNConfig(n_in=I, hidden=H, n_out=O, method="dfa", readout="every"), T)
    assert c["error_macs"] == T * H * O and c["update_macs"] == T * H * (I + H) + T * O * H


def test_adding_task():
    x, y = adding_task(200, 20, seed=3)
    m = x[..., 1].numpy()
    assert np.all(m.sum(1) == 2) and np.all(m[:, :10].sum(1) == 1)
    np.testing.assert_allclose(y[:, 0].numpy(), (x[..., 0] * x[..., 1]).sum(1).numpy(), rtol=1e-6)
    assert torch.equal(adding_task(200, 20, seed=3)[0], x)


def test_sparse_dfa_learns_digits_above_chance():
    from dfa_engine.rnn import load_task

    X, Y, Xt, Yt, meta = load_task("digits")
    net = RNN(RNNConfig(n_in=8, hidden=32, n_out=10, method="hybrid", bptt_steps=1, lr=0.3, clip=1.0,
                        feedback=RNNFeedback(kind="sparse", k=1, scale=0.1)))
    for _ in range(3):
        net.train_epoch(X, Y)
    assert net.evaluate(Xt, Yt) > 0.4


def test_quick_rnn_study_writes_json_and_plot(tmp_path):
    from dfa_engine import study

    out, png = tmp_path / "rnn.json", tmp_path / "rnn.png"
    assert study.main(["--rnn", "--task", "digits", "--quick", "--epochs", "1", "--json", str(out),
                       "--plot", str(png)]) == 0
    report = json.loads(out.read_text())
    r = {q["entry"]: q for q in report["results"]}
    assert {"bptt", "dfa", "dfa_sparse", "hybrid1", "module"} <= set(r)
    assert r["dfa_sparse"]["error_macs"] < r["dfa"]["error_macs"] < r["bptt"]["error_macs"]
    assert r["dfa"]["no_backward_through_time"] and not r["bptt"]["no_backward_through_time"]
    assert "acceptance" in report and png.stat().st_size > 0


def test_every_study_entry_has_a_tuned_setting_for_every_task():
    """``study_rnn.config`` falls back to (0.1, 0.1) for a pair the tuning never saw, which
    would put an untuned entry in the study's tables; every (task, entry) pair is tuned."""
    from dfa_engine.study_rnn import ENTRIES, HYPERPARAMETERS, LR_GRID, SCALE_GRID

    tasks = ("mnist5k", "digits", "adding")
    missing = [(t, e) for t in tasks for e in ENTRIES if (t, e) not in HYPERPARAMETERS]
    assert missing == []
    assert all(lr in LR_GRID and scale in SCALE_GRID for lr, scale in HYPERPARAMETERS.values())
