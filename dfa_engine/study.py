"""The accuracy study: ``dfa-engine study``.

Trains, on a real data set (batch 1, plain SGD, samples in data-set order, every run from
the engine's initial weights ``initial_parameters(cfg)``), two networks:

* ``N-128-10`` and ``N-256-128-64-10`` (``N`` = 784 for ``mnist5k``, 64 for ``digits``),

with

* float (float64, exact softmax; :class:`dfa_engine.nn.NumpyMLP`, the verified fast path of
  :mod:`dfa_engine.nn`): BP, DFA with dense feedback, sparse DFA with ``k = 1`` and ``k = 2``
  (``+-1``), and a hybrid (DFA on the lower hidden layers, BP on the last, dense feedback;
  4-layer net only, a single hidden layer has no split);
* fixed point (the bit-exact golden model :class:`dfa_engine.sim.golden.GoldenModel`, 16-bit
  formats of the built-in configuration): BP, dense DFA, sparse DFA ``k = 1`` and (4-layer net)
  the hybrid, with the *same* initial weights, feedback matrices, activations and learning
  rates as their float twins. Dense feedback uses the format ``s0.7`` (entries uniform in
  [-1, 1), :data:`DENSE_FEEDBACK_FORMAT`) so that ``g = B e`` fits the ``s1.14`` delta;
* a bit-width sweep: sparse DFA ``k = 1`` on ``N-128-10`` in fixed point with the weight,
  bias, update, activation, error and delta formats cut to 16 / 12 / 10 / 8 bits.

Hyperparameters are per-layer power-of-two learning rates (``lr_l = 2^-lr_shift[l]``, the
engine's own learning-rate form, so float and fixed use identical rates) and the hidden
activation (``relu`` or the bounded ``hardtanh``, :data:`ACTIVATION`). They were chosen
by ``benchmarks/study_tuning.py`` on a validation split (the last 1,000 of the 4,000 MNIST-5k
training samples; never the test set), with the same grid (rates and both activations) for
BP as for the DFA variants,
and are recorded with every result.

Cost columns (per training sample, per network):

``backward_macs``
    multiply-accumulates of the *error propagation* of the hidden layers only, i.e. what
    forms ``g_l`` in ``docs/numerics.md`` section 5; the output error, the ``f'`` masks and
    the weight-gradient outer products ``delta_l h_{l-1}^T`` (the same for every method)
    are not counted. Hidden layer ``l`` (``n_l`` neurons, ``C`` classes) costs
    ``n_{l+1} * n_l`` with BP (``W_{l+1}^T delta_{l+1}``), ``n_l * C`` with dense DFA
    (``B_l e``) and ``n_l * k`` with sparse DFA (``k`` signed additions, no multiplier with
    ``+-1``/``+-2^-s`` values).
``backward_macs_vs_bp``
    ``backward_macs`` divided by BP's for the same network.
``feedback_storage_bits``
    bits of the stored ``B_l`` tables of the DFA layers (``storage = "table"``): dense
    ``n_l * C * w_fb``; sparse ``n_l * k * (ceil(log2 C) + 1 [+ shift or magnitude bits])``.
    BP stores nothing extra (it reads the weights transposed). With ``storage = "lfsr"``
    the tables are regenerated and cost nothing but the LFSR.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

__all__ = ["add_arguments", "run", "main", "HYPERPARAMETERS", "backward_macs", "feedback_storage_bits",
           "sweep_formats"]

#: Learning-rate shifts per layer (hidden..., output), per network shape (hidden sizes) and
#: method, chosen by ``benchmarks/study_tuning.py`` (validation split). Filled in below.
HYPERPARAMETERS = {
    (128,): {
        "bp": (5, 5),                      # relu; grid 4..7 (uniform), relu and hardtanh
        "dfa": (6, 7),                     # hardtanh, feedback s0.7; grid 6..9 x relu/hardtanh
        "sparse-dfa-k1": (6, 6),           # hardtanh; grid 5..9 x relu/hardtanh
        "sparse-dfa-k2": (6, 6),           # hardtanh; grid 5..9 x relu/hardtanh
    },
    (256, 128, 64): {
        "bp": (7, 7, 7, 7),                # relu; grid 4..7 (uniform), relu and hardtanh
        "dfa": (6, 6, 6, 6),               # hardtanh, feedback s0.7 (= s1.6 with (7, 7, 7, 6))
        "sparse-dfa-k1": (7, 7, 7, 6),     # hardtanh; hidden 6..12 x output 5..7
        "sparse-dfa-k2": (6, 6, 6, 6),     # hardtanh
        "hybrid": (7, 7, 6, 6),            # hardtanh, DFA, DFA, BP, dense feedback s0.7
    },
}

#: Hidden activation per network shape and method, chosen with the learning rates (validation
#: split). ReLU lets the DFA layers' activations grow without bound (the first hidden layer
#: of the 4-layer net reaches mean |h| ~ 73 unless the DFA rates are tiny); the bounded
#: hardtanh (a clip, mask ``-1 < a < 1``) keeps them in [-1, 1] and allows 2^4..2^6 times
#: larger rates. BP was given both activations too; ReLU won there.
ACTIVATION = {
    (128,): {"bp": "relu", "dfa": "hardtanh", "sparse-dfa-k1": "hardtanh", "sparse-dfa-k2": "hardtanh"},
    (256, 128, 64): {"bp": "relu", "dfa": "hardtanh", "sparse-dfa-k1": "hardtanh",
                     "sparse-dfa-k2": "hardtanh", "hybrid": "hardtanh"},
}

#: Feedback format of dense feedback: entries uniform in [-1, 1). With s1.6 ([-2, 2)) g = B e
#: reaches +-4 and saturates the s1.14 delta; s0.7 keeps |g| <= 2 (sum |e_c| <= 2). In float
#: it only halves B, i.e. it is the same as one more lr shift on the DFA layers.
DENSE_FEEDBACK_FORMAT = "s0.7"

#: Hybrid split per network shape: methods per hidden layer.
HYBRID_METHODS = {(256, 128, 64): ("dfa", "dfa", "bp")}
#: Feedback of the hybrid variant.
HYBRID_FEEDBACK = {(256, 128, 64): ("dense",)}

#: Bit-width sweep: total width -> learning-rate shifts (784-128-10 sparse DFA k=1, the
#: engine default: hardtanh).
SWEEP_BITS = (16, 12, 10, 8)
SWEEP_LR = {16: (6, 6), 12: (6, 6), 10: (6, 6), 8: (6, 6)}   # the engine default lr
#: Widths also run with stochastic update rounding (slow in the golden model: one LFSR word per weight).
SWEEP_STOCHASTIC = (10, 8)

METHOD_LABELS = {
    "bp": "BP",
    "dfa": "DFA (dense)",
    "sparse-dfa-k1": "sparse DFA k=1",
    "sparse-dfa-k2": "sparse DFA k=2",
    "hybrid": "hybrid",
    "dfa-delta-s3.12": "DFA (dense), delta s3.12",
}


# ---- costs ------------------------------------------------------------------------------

def backward_macs(cfg) -> int:
    """Error-propagation MACs per sample of the hidden layers (see the module docstring)."""
    L, C = cfg.layers, cfg.n_classes
    total = 0
    for l, m in enumerate(cfg.methods):
        n = L[l + 1]
        if m == "bp":
            total += L[l + 2] * n
        elif cfg.feedback.kind == "dense":
            total += n * C
        else:
            total += n * cfg.feedback.k
    return total


def feedback_storage_bits(cfg) -> int:
    """Bits of the stored feedback tables of the DFA layers (see the module docstring)."""
    fb, C = cfg.feedback, cfg.n_classes
    if fb.storage == "lfsr":
        return 0
    w = cfg.formats.feedback.width
    total = 0
    for l, m in enumerate(cfg.methods):
        if m != "dfa":
            continue
        n = cfg.layers[l + 1]
        if fb.kind == "dense":
            total += n * C * w
        else:
            entry = max(1, math.ceil(math.log2(C))) + 1
            if fb.values == "pow2":
                entry += max(1, math.ceil(math.log2(fb.max_shift + 1)))
            elif fb.values == "fixed":
                entry += w - 1
            total += n * fb.k * entry
    return total


# ---- configurations -------------------------------------------------------------------------

def _feedback(kind: str, k: int = 1):
    from .config import FeedbackConfig

    if kind == "dense":
        return FeedbackConfig(kind="dense", k=1, values="fixed", seed=1)
    return FeedbackConfig(kind="sparse", k=k, values="pm1", seed=1)


def variant_config(base, hidden, n_in, n_classes, method, epochs):
    """The engine configuration of one (network, method)."""
    from .fixed import FixedFormat

    hidden = tuple(hidden)
    layers = (n_in, *hidden, n_classes)
    key = hidden if hidden in HYPERPARAMETERS else ((128,) if len(hidden) == 1 else hidden)
    hp = HYPERPARAMETERS.get(key, {})
    nh = len(hidden)
    if method == "bp":
        methods, fb = ("bp",) * nh, _feedback("sparse", 1)
    elif method == "dfa":
        methods, fb = ("dfa",) * nh, _feedback("dense")
    elif method.startswith("sparse-dfa-k"):
        methods, fb = ("dfa",) * nh, _feedback("sparse", int(method[len("sparse-dfa-k"):]))
    elif method == "hybrid":
        methods = HYBRID_METHODS[hidden]
        fb = _feedback(*HYBRID_FEEDBACK[hidden])
    else:
        raise ValueError(f"unknown method {method!r}")
    shifts = hp.get(method, (7,) * (nh + 1))
    activation = ACTIVATION.get(key, {}).get(method, base.activation)
    formats = base.formats
    if fb.kind == "dense":
        formats = replace(formats, feedback=FixedFormat.parse(DENSE_FEEDBACK_FORMAT))
    return base.with_(layers=layers, methods=methods, feedback=fb, lr_shift=tuple(shifts), epochs=epochs,
                      activation=activation, formats=formats)


#: Fixed-point variants with a format change: name -> (float twin's method, format overrides).
#: Dense feedback in s1.6 (entries in [-2, 2)) made g = B e reach +-4, which saturates the
#: s1.14 delta; delta s3.12 held it (examples/study_dense_dfa.toml). The study now uses dense
#: feedback s0.7 (:data:`DENSE_FEEDBACK_FORMAT`), which needs no wider delta, so this variant
#: is no longer in the plan; ``fixed_variant_config(..., "dfa-delta-s3.12", ...)`` still works.
FORMAT_VARIANTS = {"dfa-delta-s3.12": ("dfa", {"delta": "s3.12"})}


def fixed_variant_config(base, hidden, n_in, n_classes, method, epochs):
    """Like :func:`variant_config`, plus the format overrides of :data:`FORMAT_VARIANTS`."""
    from .fixed import FixedFormat

    twin, overrides = FORMAT_VARIANTS.get(method, (method, {}))
    cfg = variant_config(base, hidden, n_in, n_classes, twin, epochs)
    if overrides:
        cfg = cfg.with_(formats=replace(cfg.formats, **{k: FixedFormat.parse(v) for k, v in overrides.items()}))
    return cfg


def sweep_formats(base, bits: int):
    """Formats of the bit-width sweep: keep each format's integer bits, cut fraction bits.

    ``weight``/``bias``/``update``/``error``/``delta``: ``s1.(bits-2)``; ``activation``:
    ``s5.(bits-6)`` (16 bits = the defaults ``s1.14`` / ``s5.10``). ``input`` (u0.8, the
    data's own 8 bits), ``feedback`` (s1.6, +-1 only) and ``learning_rate`` stay.
    The softmax table step follows the activation: ``table_frac_bits = min(4, F_a)``.
    """
    from .fixed import FixedFormat

    f = base.formats
    s1 = FixedFormat(True, 1, bits - 2)
    act = FixedFormat(True, 5, bits - 6)
    formats = replace(f, weight=s1, bias=s1, update=s1, error=s1, delta=s1, activation=act)
    return base.with_(formats=formats, softmax_table_frac_bits=min(base.softmax_table_frac_bits, act.frac_bits))


# ---- training runs -------------------------------------------------------------------------

def _train(cfg, arithmetic, data, epochs, log=None):
    """Train one configuration; returns (curve, train accuracy, seconds, diverged, extra)."""
    x_train, y_train, x_test, y_test = data
    extra = {}
    t0 = time.perf_counter()
    curve, train_acc, diverged = [], None, False
    if arithmetic == "fixed":
        from .sim.golden import GoldenModel

        X = cfg.formats.input.from_float(x_train)
        Xt = cfg.formats.input.from_float(x_test)
        model = GoldenModel(cfg)
        for _ in range(epochs):
            train_acc = model.train_epoch(X, y_train)
            curve.append(model.evaluate(Xt, y_test))
        extra["saturation"] = dict(sorted(model.stats.items()))
    else:
        from .nn import NumpyMLP

        model = NumpyMLP.from_config(cfg)
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(epochs):
                try:
                    train_acc = model.train_epoch(x_train, y_train)
                except FloatingPointError:
                    diverged = True
                    curve.extend([0.0] * (epochs - len(curve)))
                    break
                curve.append(model.evaluate(x_test, y_test))
        extra["model"] = model
    return curve, train_acc, time.perf_counter() - t0, diverged, extra


def _alignment(model, cfg, x, y, n=256):
    """Mean angle (degrees) between DFA and BP weight updates per DFA layer, on a batch."""
    import torch

    from .nn import MLP, alignment

    if not any(m == "dfa" for m in cfg.methods):
        return None
    net = MLP(cfg.layers, cfg.activation, cfg.methods, feedback=model.B, dtype=torch.float64)
    with torch.no_grad():
        for lin, W, b in zip(net.linears, model.W, model.b):
            lin.weight.copy_(torch.as_tensor(W))
            lin.bias.copy_(torch.as_tensor(b))
    xs = torch.as_tensor(x[:n])
    ys = torch.as_tensor(y[:n])
    angles = alignment(net, net.dfa, xs, ys)
    return [round(angles[f"linears.{l}.weight"], 2) if m == "dfa" else None
            for l, m in enumerate(cfg.methods)]


def _result(cfg, network, method, arithmetic, epochs, curve, train_acc, seconds, diverged, bp_macs):
    macs = backward_macs(cfg)
    r = {
        "network": network,
        "method": method,
        "arithmetic": arithmetic,
        "epochs": epochs,
        "test_accuracy": curve[-1] if curve else None,
        "best_test_accuracy": max(curve) if curve else None,
        "train_accuracy_last_epoch": train_acc,
        "dfa_share": cfg.dfa_share(),
        "backward_macs": macs,
        "backward_macs_vs_bp": macs / bp_macs if bp_macs else None,
        "feedback_storage_bits": feedback_storage_bits(cfg),
        "curve": curve,
        "diverged": diverged,
        "methods": list(cfg.methods),
        "activation": cfg.activation,
        "feedback": ({"kind": cfg.feedback.kind, "k": cfg.feedback.k, "values": cfg.feedback.values,
                      "format": str(cfg.formats.feedback), "seed": cfg.feedback.seed}
                     if "dfa" in cfg.methods else None),
        "lr_shift": list(cfg.lr_shift),
        "learning_rates": [2.0 ** -s for s in cfg.lr_shift],
        "seconds": round(seconds, 2),
    }
    if arithmetic == "fixed":
        r["formats"] = {k: str(getattr(cfg.formats, k)) for k in
                        ("input", "weight", "bias", "activation", "error", "feedback", "delta", "update")}
    return r


def _say(msg, quiet=False):
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def study(dataset="mnist5k", epochs=10, quick=False, sweep=True, quiet=False):
    """Run the whole study; returns the JSON-able dict."""
    from .config import default_config
    from .data import load_dataset

    ds = load_dataset(dataset)
    x_train, y_train, x_test, y_test = ds.x_train, ds.y_train, ds.x_test, ds.y_test
    if quick:
        x_train, y_train, x_test, y_test = x_train[:300], y_train[:300], x_test[:300], y_test[:300]
    data = (x_train, y_train, x_test, y_test)
    n_in, n_classes = ds.n_features, int(max(ds.y_train.max(), ds.y_test.max())) + 1
    base = default_config()
    results = []
    plan = [
        ((128,), ["bp", "dfa", "sparse-dfa-k1", "sparse-dfa-k2"],
         ["bp", "dfa", "sparse-dfa-k1"]),
        ((256, 128, 64), ["bp", "dfa", "sparse-dfa-k1", "sparse-dfa-k2", "hybrid"],
         ["bp", "dfa", "sparse-dfa-k1", "hybrid"]),
    ]
    t_start = time.perf_counter()
    for hidden, float_methods, fixed_methods in plan:
        network = "-".join(str(n) for n in (n_in, *hidden, n_classes))
        bp_macs = backward_macs(variant_config(base, hidden, n_in, n_classes, "bp", epochs))
        for arithmetic, methods in (("float", float_methods), ("fixed", fixed_methods)):
            for method in methods:
                cfg = fixed_variant_config(base, hidden, n_in, n_classes, method, epochs)
                curve, train_acc, secs, div, extra = _train(cfg, arithmetic, data, epochs)
                r = _result(cfg, network, method, arithmetic, epochs, curve, train_acc, secs, div, bp_macs)
                if arithmetic == "fixed":
                    r["saturation"] = extra["saturation"]
                elif not div and "dfa" in cfg.methods:
                    r["alignment_degrees"] = _alignment(extra["model"], cfg, x_train, y_train)
                results.append(r)
                _say(f"  {network:18s} {method:14s} {arithmetic:5s} test {r['test_accuracy']:.4f}"
                     f"  ({secs:.1f} s)", quiet)
    sweep_rows = []
    if sweep:
        hidden = (128,)
        network = "-".join(str(n) for n in (n_in, *hidden, n_classes))
        for bits in SWEEP_BITS:
            for rounding in ("nearest", "stochastic") if bits in SWEEP_STOCHASTIC else ("nearest",):
                cfg = variant_config(base, hidden, n_in, n_classes, "sparse-dfa-k1", epochs)
                cfg = sweep_formats(cfg, bits).with_(lr_shift=tuple(SWEEP_LR[bits]), rounding_update=rounding)
                curve, train_acc, secs, div, extra = _train(cfg, "fixed", data, epochs)
                sweep_rows.append({
                    "network": network, "method": "sparse-dfa-k1", "arithmetic": "fixed", "bits": bits,
                    "rounding_update": rounding,
                    "formats": {k: str(getattr(cfg.formats, k)) for k in
                                ("input", "weight", "bias", "activation", "error", "feedback", "delta", "update")},
                    "softmax_table_frac_bits": cfg.softmax_table_frac_bits,
                    "lr_shift": list(cfg.lr_shift), "epochs": epochs,
                    "test_accuracy": curve[-1], "best_test_accuracy": max(curve), "curve": curve,
                    "saturation": extra["saturation"], "seconds": round(secs, 2),
                })
                _say(f"  sweep {bits:2d} bits {rounding:10s} test {curve[-1]:.4f}  ({secs:.1f} s)", quiet)
    return {
        "dataset": dataset,
        "train_samples": len(x_train),
        "test_samples": len(x_test),
        "quick": quick,
        "batch_size": 1,
        "optimizer": "plain SGD, samples in data-set order, lr_l = 2^-lr_shift[l]",
        "float_arithmetic": "float64, exact softmax (dfa_engine.nn.NumpyMLP)",
        "fixed_arithmetic": "bit-exact golden model (dfa_engine.sim.golden.GoldenModel)",
        "hyperparameters": {"-".join(map(str, k)): {m: list(v) for m, v in hp.items()}
                            for k, hp in HYPERPARAMETERS.items()},
        "activations": {"-".join(map(str, k)): dict(a) for k, a in ACTIVATION.items()},
        "dense_feedback_format": DENSE_FEEDBACK_FORMAT,
        "hyperparameter_selection": "benchmarks/study_tuning.py: validation split (last 1000 training "
                                    "samples), same lr grid and activations (relu, hardtanh) for every method",
        "seconds": round(time.perf_counter() - t_start, 1),
        "results": results,
        "bitwidth_sweep": sweep_rows,
    }


# ---- output -----------------------------------------------------------------------------------

def format_table(report) -> str:
    rows = [("network", "method", "arith", "act", "test acc", "best", "DFA share", "bwd MACs/BP", "fb bits",
             "lr shifts")]
    for r in report["results"]:
        rows.append((r["network"], METHOD_LABELS.get(r["method"], r["method"]), r["arithmetic"], r["activation"],
                     f"{r['test_accuracy']:.4f}" + (" (diverged)" if r["diverged"] else ""),
                     f"{r['best_test_accuracy']:.4f}", f"{r['dfa_share']:.2f}",
                     f"{r['backward_macs_vs_bp']:.4f}", str(r["feedback_storage_bits"]),
                     ",".join(map(str, r["lr_shift"]))))
    out = _columns(rows)
    if report["bitwidth_sweep"]:
        rows = [("bits", "update rounding", "weight", "activation", "error/delta", "lr shifts", "test acc",
                 "saturations")]
        for r in report["bitwidth_sweep"]:
            rows.append((str(r["bits"]), r["rounding_update"], r["formats"]["weight"], r["formats"]["activation"],
                         r["formats"]["error"], ",".join(map(str, r["lr_shift"])), f"{r['test_accuracy']:.4f}",
                         str(sum(r["saturation"].values()))))
        out += "\n\nbit-width sweep (" + report["bitwidth_sweep"][0]["network"] + ", sparse DFA k=1, fixed point)\n"
        out += _columns(rows)
    return out


def _columns(rows) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(report, directory) -> list:
    """Training curves per network and the bit-width sweep, as PNG files; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    networks = list(dict.fromkeys(r["network"] for r in report["results"]))
    for net in networks:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in report["results"]:
            if r["network"] != net:
                continue
            ls = "-" if r["arithmetic"] == "float" else "--"
            ax.plot(range(1, len(r["curve"]) + 1), [100 * a for a in r["curve"]], ls, marker=".",
                    label=f"{METHOD_LABELS.get(r['method'], r['method'])}, {r['arithmetic']}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{net} on {report['dataset']} (batch 1, SGD)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        lo = min(100 * min(r["curve"]) for r in report["results"] if r["network"] == net)
        ax.set_ylim(max(0, min(lo, 80) - 2), 100)
        p = out / f"study_curves_{net}.png"
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    if report["bitwidth_sweep"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for rounding in ("nearest", "stochastic"):
            rows = [r for r in report["bitwidth_sweep"] if r["rounding_update"] == rounding]
            if rows:
                ax.plot([r["bits"] for r in rows], [100 * r["test_accuracy"] for r in rows], marker="o",
                        label=f"update rounding: {rounding}")
        ref = [r for r in report["results"] if r["method"] == "sparse-dfa-k1" and r["arithmetic"] == "float"
               and r["network"] == report["bitwidth_sweep"][0]["network"]]
        if ref:
            ax.axhline(100 * ref[0]["test_accuracy"], color="gray", ls=":", label="float64")
        ax.set_xlabel("bits (weight, activation, error, delta, update)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{report['bitwidth_sweep'][0]['network']} sparse DFA k=1, fixed point")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        p = out / "study_bitwidth.png"
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


# ---- command line -----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the study's options to ``parser`` (a ``dfa-engine`` subparser or a fresh parser)."""
    parser.description = (parser.description or "") + (
        "Accuracy study: float BP / DFA / sparse DFA / hybrid against the bit-exact fixed-point "
        "model, on N-128-10 and N-256-128-64-10, plus a bit-width sweep.")
    parser.add_argument("--dataset", choices=("mnist5k", "digits"), default="mnist5k")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (default 10)")
    parser.add_argument("--json", metavar="PATH", help="write the results to this JSON file")
    parser.add_argument("--plots", metavar="DIR", help="write PNG plots into this directory")
    parser.add_argument("--quick", action="store_true",
                        help="300 training / 300 test samples (a smoke test, not a measurement)")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the bit-width sweep")
    parser.add_argument("--cnn", action="store_true",
                        help="run the CNN study instead (2-conv and 4-conv nets on mnist5k: BP, dense DFA, sparse "
                             "dilated DFA, module DFA A/B, hybrid; docs/cnn.md)")
    parser.add_argument("--rnn", action="store_true",
                        help="run the RNN study instead (Elman RNN: BPTT, truncated BPTT, dense/sparse DFA through "
                             "time, hybrids, time modules; docs/rnn.md)")
    parser.add_argument("--task", choices=("mnist5k", "digits", "adding"), default="mnist5k",
                        help="with --rnn: row-by-row mnist5k or digits, or the adding problem (default mnist5k)")
    parser.add_argument("--plot", metavar="PATH", help="with --cnn/--rnn: write the accuracy/cost plot (PNG) here")
    parser.add_argument("--fixed", action="store_true",
                        help="with --cnn: the fixed-point golden model of the best DFA variant next to its float twin "
                             "(dfa_engine/study_cnn_fixed.py, docs/cnn.md); with --rnn (--task mnist5k or digits): the "
                             "fixed-point RNN golden model next to its float twin (dfa_engine/study_rnn_fixed.py, docs/rnn.md)")
    parser.add_argument("--networks", metavar="LIST", help="with --cnn --fixed: comma-separated, default 2conv,4conv; "
                        "with --rnn --fixed: feedback kinds, default dense,sparse")
    parser.add_argument("--seeds", metavar="LIST", help="with --rnn --fixed: comma-separated initial-weight seeds, "
                        "default 0")
    parser.add_argument("--formats", metavar="LIST", help="with --rnn --fixed: format sets, default wide_weights "
                        "(also: mlp_defaults)")
    return parser


def run(args) -> int:
    """Run the study for parsed ``args`` (see :func:`add_arguments`); returns the exit status."""
    import torch
    from threadpoolctl import threadpool_limits

    if args.epochs < 1:
        print("error: --epochs must be at least 1", file=sys.stderr)
        return 2
    if getattr(args, "rnn", False):
        from . import study_rnn

        with threadpool_limits(1):
            if getattr(args, "fixed", False):
                from . import study_rnn_fixed

                return study_rnn_fixed.run(args)
            return study_rnn.run(args)
    if getattr(args, "cnn", False):
        from . import study_cnn

        if args.dataset != "mnist5k":
            print("error: --cnn runs on mnist5k only", file=sys.stderr)
            return 2
        with threadpool_limits(1):
            if getattr(args, "fixed", False):
                from . import study_cnn_fixed

                return study_cnn_fixed.run(args)
            return study_cnn.run(args)
    torch.set_num_threads(1)
    with threadpool_limits(1):
        report = study(args.dataset, args.epochs, args.quick, getattr(args, "sweep", True))
    print(format_table(report))
    print(f"\n{report['train_samples']} train / {report['test_samples']} test samples, "
          f"{args.epochs} epochs, batch 1; {report['seconds']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"wrote {args.json}")
    if args.plots:
        for p in plot(report, args.plots):
            print(f"wrote {p}")
    return 0


def main(argv=None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="dfa-engine study"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
