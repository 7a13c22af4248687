"""Checks shared by the CNN and RNN engine tests: sklearn digits as 8-bit samples, run the
family's golden model over the same samples the engine saw, and compare results and
parameters element by element."""

import numpy as np
from sklearn.datasets import load_digits

from dfa_engine.sim.golden_feed import golden_model


def digits_u8(n, offset, shape):
    """``n`` sklearn digits from ``offset``, pixels 0..16 scaled to raw ``u0.8`` (0..255), each
    reshaped to ``shape`` (the CNN's ``(1, 8, 8)`` image, the RNN's 8 steps of 8 pixels)."""
    X, Y = load_digits(return_X_y=True)
    X = np.clip(np.round(X / 16 * 255), 0, 255).astype(np.int64).reshape(-1, *shape)
    return X[offset:offset + n], Y[offset:offset + n].astype(np.int64)


def golden_run(cfg, X, Y, train):
    """(golden model after the run, per sample (prediction, e or None, trained, rejected)), as
    the engine treats each sample: a training sample with a bad label is inferred, rejected."""
    g = golden_model(cfg)
    out = []
    for x, y, t in zip(X, Y, train):
        if t and 0 <= y < cfg.n_classes:
            out.append((g.train_step(x, int(y)), [int(v) for v in g.last_error], 1, 0))
        else:
            out.append((g.predict(x), None, 0, int(t)))
    return g, out


def assert_matches_golden(results, params, want, golden_params):
    """Every result (prediction, flags, and ``e`` of a trained sample) and every parameter
    (``golden_params`` laid out as the host map reads them) equal to the golden model's."""
    for s, (got, exp) in enumerate(zip(results, want)):
        assert got[0] == exp[0], f"sample {s}: prediction {got[0]} != golden {exp[0]}"
        assert got[2:] == exp[2:], f"sample {s}: trained/rejected {got[2:]} != golden {exp[2:]}"
        if exp[1] is not None:
            assert got[1] == exp[1], f"sample {s}: output error differs"
    for l, ((W, b), (Wg, bg)) in enumerate(zip(params, golden_params)):
        np.testing.assert_array_equal(W, np.asarray(Wg).reshape(W.shape), err_msg=f"W{l + 1}")
        np.testing.assert_array_equal(b, bg, err_msg=f"b{l + 1}")
