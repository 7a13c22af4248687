"""Float CNN reference (dfa_engine.cnn): BP = autograd, the sparse dilated feedback's index
formula, no backward locking for DFA, the module readings, the cost counters."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dfa_engine.cnn import (CNN, CNNConfig, DilatedFeedback, FeedbackSpec, costs, default_modules, layer_sources,
                            parse_spec)
from dfa_engine.lfsr import LFSRBlock, seed_state

torch.set_num_threads(1)
TINY = "conv4-mp2-conv8-mp2-fc10"              # on 1x8x8 inputs
TINY4 = "conv4-conv4g2-mp2-conv8-conv8-mp2-fc10"
SPARSE = FeedbackSpec(kind="sparse_dilated", d=2, k=1, groups=2)


def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _net(spec=TINY, **kw):
    return CNN(CNNConfig(spec=spec, in_shape=(1, 8, 8), **kw))


def test_parse_spec():
    s = parse_spec("conv16k5s2p1g4-ap2-fc10")
    assert (s[0].kind, s[0].n, s[0].k, s[0].stride, s[0].pad, s[0].groups) == ("conv", 16, 5, 2, 1, 4)
    assert s[1].kind == "avgpool" and s[2].kind == "fc"
    with pytest.raises(ValueError):
        parse_spec("conv8-mp2")


@pytest.mark.parametrize("spec", [TINY, TINY4, "conv4-ap2-fc12-fc10"])
def test_bp_gradients_equal_autograd(spec):
    x, y = _data()
    net = _net(spec, method="bp", activation="relu")
    _, _, _, grads, _ = net.gradients(x, y)
    ref = copy.deepcopy(net)
    F.cross_entropy(ref(x), y).backward()
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(grads[p], q.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_sparse_dilated_operator_equals_index_formula():
    shape, C = (6, 5, 7), 10
    fb = FeedbackSpec(kind="sparse_dilated", d=3, k=2, groups=3, values="pow2", max_shift=3, scale=0.5, seed=7)
    op = DilatedFeedback(shape, C, fb, layer=2)
    ch, h, w = shape
    d, G, k = 3, 3, 2
    words = LFSRBlock(seed_state(7, 2)).draws(ch * d * d * k).reshape(-1, k).astype(np.int64)
    M = np.zeros((ch * h * w, C))
    for c in range(ch):
        gi = c // (ch // G)
        c0, c1 = gi * C // G, (gi + 1) * C // G
        cg = c1 - c0
        for yy in range(h):
            for xx in range(w):
                r = (c * d + yy % d) * d + xx % d
                base = ((int(words[r, 0]) & 0xFFFF) * cg) >> 16
                for m in range(k):
                    cls = c0 + (base + m) % cg
                    assert c0 <= cls < c1
                    wd = int(words[r, m])
                    s = (((wd >> 17) & 0x7FFF) * 4) >> 15
                    M[(c * h + yy) * w + xx, cls] += (-1.0 if (wd >> 16) & 1 else 1.0) * 0.5 * 2.0 ** -s
    np.testing.assert_array_equal(op.reference_matrix(), M)
    e = torch.randn(4, C)
    torch.testing.assert_close(op(e).reshape(4, -1), e @ torch.as_tensor(M, dtype=torch.float32).T)
    # a period-d pattern: every output position reads the lattice point at its phase
    g = op(e)
    torch.testing.assert_close(g[:, :, d:, :], g[:, :, :-d, :])
    assert op.storage_bits() == ch * d * d * k * (2 + 1 + 2)     # C_g = 4 (10 classes / 3 groups): 2 + sign + shift


@pytest.mark.parametrize("kind", ["dense", "sparse_dilated"])
def test_dfa_delta_depends_only_on_e_and_own_preactivation(kind):
    """No backward locking: delta_l = (B_l e) * f'(a_l) whatever the layers above hold."""
    x, y = _data()
    for scale_upper in (1.0, -3.0):
        net = _net(TINY4, method="dfa" if kind == "dense" else "dfa_sparse_dilated", feedback=SPARSE)
        with torch.no_grad():
            for b in net.blocks[2:]:
                b.layer.weight.mul_(scale_upper)
        _, _, e, _, deltas = net.gradients(x, y)
        h = x
        for l in range(len(net.blocks) - 1):
            a = net.blocks[l].layer(h)
            h = net.blocks[l](h)[1]
            torch.testing.assert_close(deltas[l], net.project(l, e) * (a > 0), rtol=1e-5, atol=1e-8)


def test_bp_delta_depends_on_layers_above():
    x, y = _data()
    net = _net(TINY4, method="bp")
    _, _, e, _, d1 = net.gradients(x, y)
    with torch.no_grad():
        net.blocks[2].layer.weight.mul_(-3.0)
    _, _, _, _, d2 = net.gradients(x, y)
    assert not torch.allclose(d1[0], d2[0])


def test_module_readings():
    x, y = _data()
    mods = ((0, 1), (2, 3))
    cfg = dict(spec=TINY4, modules=mods, feedback=SPARSE)
    assert default_modules(CNNConfig(spec=TINY4)) == mods
    assert layer_sources(CNNConfig(method="module_a", **cfg)) == ("bp", "dfa", "bp", "dfa")
    assert layer_sources(CNNConfig(method="module_b", **cfg)) == ("dfa", "bp", "dfa", "bp")
    assert layer_sources(CNNConfig(method="hybrid", **cfg)) == ("dfa", "dfa", "bp", "bp")
    assert layer_sources(CNNConfig(method="hybrid", bp_modules=(), **cfg)) == ("dfa",) * 4

    def full_forward(net):
        h, pres, hs = x, [], []
        for b in net.blocks:
            xin = h.flatten(1) if b.flatten_in else h
            a = b.layer(xin)
            hh = b.act(a)
            out = hh
            for p in b.post:
                out = F.max_pool2d(out, p.n)
            pres.append(a), hs.append(hh)
            h = out
        return pres, hs

    # reading A: module tops get B e; the layer below gets BP of that inside the module
    net = _net(method="module_a", **cfg)
    _, _, e, _, deltas = net.gradients(x, y)
    pres, hs = full_forward(net)
    for top, low in ((1, 0), (3, 2)):
        g = net.project(top, e)
        torch.testing.assert_close(deltas[top], g * (pres[top] > 0))
        torch.testing.assert_close(deltas[low], torch.autograd.grad(hs[top], pres[low], g)[0])
    # reading B: module tops get the gradient BP brings across the boundary from the layer above
    net = _net(method="module_b", **cfg)
    _, _, e, _, deltas = net.gradients(x, y)
    pres, hs = full_forward(net)
    torch.testing.assert_close(deltas[1], torch.autograd.grad(pres[2], pres[1], deltas[2])[0])
    torch.testing.assert_close(deltas[3], torch.autograd.grad(pres[4], pres[3], deltas[4])[0])
    torch.testing.assert_close(deltas[2], net.project(2, e) * (pres[2] > 0))
    bp = _net(method="bp", **cfg)
    _, _, _, _, dbp = bp.gradients(x, y)
    torch.testing.assert_close(deltas[3], dbp[3])          # the top module's top layer: the true gradient
    a = _net(method="module_a", **cfg).gradients(x, y)[4]
    assert not torch.allclose(a[3], deltas[3]) and not torch.allclose(a[0], deltas[0])


def test_costs_by_hand():
    # conv4 on 1x8x8: 4*64*9 = 2304 MACs; pool -> 4x4x4; conv8: 8*16*4*9 = 4608; pool -> 8x2x2; fc: 10*32 = 320
    bp = _net(method="bp")
    c = costs(bp)
    assert c["forward_macs"] == 2304 + 4608 + 320
    assert c["backward_macs"] == 4608 + 320 and c["feedback_storage_bits"] == 0
    dense = costs(_net(method="dfa", feedback=FeedbackSpec(bits=8)))
    assert dense["backward_macs"] == (256 + 128) * 10
    assert dense["feedback_storage_bits"] == (256 + 128) * 10 * 8
    sp = costs(_net(method="dfa_sparse_dilated", feedback=SPARSE))
    assert sp["backward_macs"] == 256 + 128
    # 5 classes per group: 3 index bits + 1 sign; 4*2*2 and 8*2*2 rows of k = 1
    assert sp["feedback_storage_bits"] == (16 + 32) * 4
    assert costs(_net(method="dfa_sparse_dilated", feedback=SPARSE.__class__(**{**SPARSE.__dict__, "storage": "lfsr"})
                      ))["feedback_storage_bits"] == 0
    ma = costs(_net(method="module_a", modules=((0, 1),), feedback=SPARSE))
    assert ma["backward_macs"] == 4608 + 128 and ma["feedback_storage_bits"] == 32 * 4


def test_same_initial_weights_for_every_method():
    a, b = _net(method="bp"), _net(method="module_b", modules=((0, 1),), feedback=SPARSE)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_training_reduces_loss():
    x, y = _data(32)
    net = _net(TINY4, method="hybrid", feedback=SPARSE, lr=0.1)
    first = net.step(x, y)
    for _ in range(30):
        last = net.step(x, y)
    assert last < first


def test_quick_cnn_study_writes_json_and_plot(tmp_path):
    import json

    from dfa_engine import study

    out, png = tmp_path / "cnn.json", tmp_path / "cnn.png"
    assert study.main(["--cnn", "--quick", "--epochs", "1", "--json", str(out), "--plot", str(png)]) == 0
    report = json.loads(out.read_text())
    assert {(r["network"], r["method"]) for r in report["results"]} == {
        (n, m) for n in ("2conv", "4conv")
        for m in ("bp", "dfa", "dfa_sparse_dilated", "module_a", "module_b", "hybrid")}
    r = {(r["network"], r["method"]): r for r in report["results"]}
    assert r[("4conv", "hybrid")]["sources"] == ["dfa", "dfa", "bp", "bp"]
    assert r[("4conv", "dfa_sparse_dilated")]["backward_macs"] < r[("4conv", "dfa")]["backward_macs"] \
        < r[("4conv", "bp")]["backward_macs"]
    assert png.stat().st_size > 0
