"""Feedback matrices: structure, value sets, determinism, and a rebuild from the written rules."""

import numpy as np
import pytest

from _reference import RefLFSR, ref_from_float, ref_seed_state
from dfa_engine.config import config_from_dict
from dfa_engine.feedback import feedback_matrix, initial_parameters, sparse_feedback


def make_cfg(rows=50, classes=10, kind="sparse", values="pm1", k=1, max_shift=0, storage="table",
             seed=1, fb_format="s1.6", layers=None, **extra):
    data = {"network": {"layers": layers or [8, rows, classes]},
            "formats": {"feedback": fb_format},
            "feedback": {"kind": kind, "values": values, "k": k, "max_shift": max_shift,
                         "storage": storage, "seed": seed}}
    for section, entries in extra.items():
        data.setdefault(section, {}).update(entries)
    return config_from_dict(data)


def _to_dense(sp, rows, classes):
    """Dense B from the stored sparse form, written from the SparseFeedback docstring."""
    B = [[0] * classes for _ in range(rows)]
    for i in range(rows):
        for m in range(sp.index.shape[1]):
            v = int(sp.magnitude[i, m])
            B[i][int(sp.index[i, m])] += -v if sp.sign[i, m] else v
    return np.array(B, dtype=np.int64)


SPARSE_CASES = [("pm1", 1, 0), ("pm1", 2, 0), ("pm1", 3, 0), ("pm1", 7, 0), ("pow2", 1, 3),
                ("pow2", 2, 6), ("pow2", 1, 1), ("fixed", 1, 0), ("fixed", 4, 0)]


@pytest.mark.parametrize("values, k, max_shift", SPARSE_CASES)
@pytest.mark.parametrize("fb_format", ["s1.6", "s2.9"])
def test_sparse_structure_and_values(values, k, max_shift, fb_format):
    rows, classes = 300, 7
    cfg = make_cfg(rows, classes, values=values, k=k, max_shift=max_shift, fb_format=fb_format)
    fmt = cfg.formats.feedback
    frac, lo, hi = fmt.frac_bits, -(2 ** (fmt.width - 1)), 2 ** (fmt.width - 1) - 1
    sp = sparse_feedback(cfg, 0)
    for a in (sp.index, sp.sign, sp.shift, sp.magnitude):
        assert a.shape == (rows, k) and a.dtype == np.int64
    assert sp.index.min() >= 0 and sp.index.max() < classes
    for row in sp.index.tolist():
        assert len(set(row)) == k                                   # k distinct classes
        assert row == [(row[0] + m) % classes for m in range(k)]    # consecutive mod C
    assert set(np.unique(sp.sign).tolist()) == {0, 1}
    if values == "pm1":
        assert (sp.shift == 0).all() and (sp.magnitude == 2 ** frac).all()
    elif values == "pow2":
        assert sp.shift.min() >= 0 and sp.shift.max() <= max_shift
        assert (sp.magnitude == 2 ** (frac - sp.shift)).all()
    else:
        assert (sp.shift == 0).all()
        assert sp.magnitude.min() >= 1 and sp.magnitude.max() <= hi
    B = feedback_matrix(cfg, 0)
    assert B.shape == (rows, classes) and B.dtype == np.int64
    assert (np.count_nonzero(B, axis=1) == k).all()
    assert B.min() >= lo and B.max() <= hi


@pytest.mark.parametrize("max_shift", [1, 2, 3, 6])
def test_pow2_uses_every_shift_up_to_max_shift(max_shift):
    """Shifts are uniform over 0..max_shift (one in max_shift + 1 each)."""
    rows = 4000
    sp = sparse_feedback(make_cfg(rows, 10, values="pow2", max_shift=max_shift), 0)
    counts = np.bincount(sp.shift.ravel(), minlength=max_shift + 1)
    assert counts.size == max_shift + 1
    expected = rows / (max_shift + 1)
    assert np.all(np.abs(counts - expected) < 6 * np.sqrt(expected)), counts


@pytest.mark.parametrize("fb_format", ["s1.6", "s0.7", "s3.4", "s1.14"])
def test_dense_matrix_in_format_range(fb_format):
    rows, classes = 200, 10
    cfg = make_cfg(rows, classes, kind="dense", values="fixed", fb_format=fb_format)
    fmt = cfg.formats.feedback
    lo, hi = -(2 ** (fmt.width - 1)), 2 ** (fmt.width - 1) - 1
    B = feedback_matrix(cfg, 0)
    assert B.shape == (rows, classes) and B.dtype == np.int64
    assert B.min() >= lo and B.max() <= hi
    assert np.unique(B).size > min(100, (hi - lo) // 2)           # not all equal, well spread
    assert B.min() < 0 < B.max()
    # Uniform over [lo, hi]: the mean is -1/2 raw, give or take a few standard errors.
    sd = (hi - lo + 1) / np.sqrt(12 * B.size)
    assert abs(B.mean() + 0.5) < 5 * sd


@pytest.mark.parametrize("values, k, max_shift", SPARSE_CASES)
def test_dense_from_sparse_equals_feedback_matrix(values, k, max_shift):
    rows, classes = 120, 9
    cfg = make_cfg(rows, classes, values=values, k=k, max_shift=max_shift)
    assert np.array_equal(_to_dense(sparse_feedback(cfg, 0), rows, classes), feedback_matrix(cfg, 0))


def _spec_sparse(seed, stream, rows, classes, k, values, max_shift, frac, max_raw):
    """B from the documented rules, with the reference LFSR (no dfa_engine code)."""
    rng = RefLFSR(ref_seed_state(seed, stream))
    B = [[0] * classes for _ in range(rows)]
    for i in range(rows):
        w = rng.draws(k)
        base = ((w[0] & 0xFFFF) * classes) >> 16
        for m in range(k):
            if values == "pm1":
                mag = 2 ** frac
            elif values == "pow2":
                # 15 random bits (17..31) scaled to 0..max_shift.
                mag = 2 ** (frac - ((((w[m] >> 17) & 0x7FFF) * (max_shift + 1)) >> 15))
            else:
                mag = 1 + ((((w[m] >> 17) & 0x7FFF) * max_raw) >> 15)
            B[i][(base + m) % classes] += -mag if (w[m] >> 16) & 1 else mag
    return np.array(B, dtype=np.int64)


def _spec_dense(seed, stream, rows, classes, width):
    rng = RefLFSR(ref_seed_state(seed, stream))
    out = []
    for _ in range(rows * classes):
        top = rng.draw() >> (32 - width)
        out.append(top - 2 ** width if top >= 2 ** (width - 1) else top)
    return np.array(out, dtype=np.int64).reshape(rows, classes)


@pytest.mark.parametrize("values, k, max_shift", SPARSE_CASES)
def test_sparse_matches_written_rules(values, k, max_shift):
    rows, classes = 40, 7
    cfg = make_cfg(rows, classes, values=values, k=k, max_shift=max_shift, seed=1234,
                   layers=[5, 9, rows, classes])
    fmt = cfg.formats.feedback
    for layer, n in ((0, 9), (1, rows)):
        want = _spec_sparse(1234, layer, n, classes, k, values, max_shift, fmt.frac_bits, fmt.max_raw)
        assert np.array_equal(feedback_matrix(cfg, layer), want), layer


def test_dense_matches_written_rules():
    cfg = make_cfg(30, 6, kind="dense", values="fixed", seed=77, fb_format="s2.9")
    assert np.array_equal(feedback_matrix(cfg, 0), _spec_dense(77, 0, 30, 6, 12))


@pytest.mark.parametrize("kind, values, k", [("sparse", "pm1", 2), ("sparse", "fixed", 1), ("dense", "fixed", 1)])
def test_seeds_and_streams(kind, values, k):
    a = feedback_matrix(make_cfg(64, 10, kind=kind, values=values, k=k, seed=5), 0)
    assert np.array_equal(a, feedback_matrix(make_cfg(64, 10, kind=kind, values=values, k=k, seed=5), 0))
    assert not np.array_equal(a, feedback_matrix(make_cfg(64, 10, kind=kind, values=values, k=k, seed=6), 0))
    # Another hidden layer is another stream of the same seed.
    two = make_cfg(64, 10, kind=kind, values=values, k=k, seed=5, layers=[8, 64, 64, 10])
    assert np.array_equal(feedback_matrix(two, 0), a)
    assert not np.array_equal(feedback_matrix(two, 1), a)


@pytest.mark.parametrize("kind, values, k, max_shift", [("sparse", "pm1", 1, 0), ("sparse", "pow2", 3, 4),
                                                        ("sparse", "fixed", 2, 0)])
def test_table_and_lfsr_storage_give_the_same_matrix(kind, values, k, max_shift):
    kw = dict(rows=80, classes=10, kind=kind, values=values, k=k, max_shift=max_shift, seed=9)
    assert np.array_equal(feedback_matrix(make_cfg(storage="table", **kw), 0),
                          feedback_matrix(make_cfg(storage="lfsr", **kw), 0))


def test_dense_feedback_cannot_be_regenerated():
    from dfa_engine.config import ConfigError
    with pytest.raises(ConfigError, match=r"^feedback\.storage: 'lfsr' regenerates sparse feedback only"):
        make_cfg(rows=8, classes=10, kind="dense", values="fixed", storage="lfsr")


def test_class_balance_k1():
    rows, classes = 10000, 10
    sp = sparse_feedback(make_cfg(rows, classes), 0)
    counts = np.bincount(sp.index[:, 0], minlength=classes)
    # Binomial(10000, 0.1): sd 30; allow 5 sd.
    assert np.all(np.abs(counts - rows / classes) < 150), counts
    signs = np.bincount(sp.sign[:, 0], minlength=2)
    assert abs(signs[0] - rows / 2) < 250, signs


def test_initial_parameters():
    cfg = make_cfg(20, 10, layers=[30, 20, 10], training={"seed": 3})
    params = initial_parameters(cfg)
    rng = np.random.default_rng(3)
    fmt = cfg.formats.weight
    for (W, b), (n_in, n_out) in zip(params, [(30, 20), (20, 10)]):
        u = rng.uniform(-1 / np.sqrt(n_in), 1 / np.sqrt(n_in), size=(n_out, n_in))
        assert W.dtype == np.int64 and W.shape == (n_out, n_in)
        assert W.tolist() == [[ref_from_float(float(v), True, fmt.int_bits, fmt.frac_bits) for v in row] for row in u]
        assert b.tolist() == [0] * n_out
    again = initial_parameters(cfg)
    assert all(np.array_equal(W1, W2) for (W1, _), (W2, _) in zip(params, again))
