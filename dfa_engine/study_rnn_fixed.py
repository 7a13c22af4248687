"""The fixed-point RNN entry of the study: ``dfa-engine study --rnn --fixed --task {mnist5k,digits}``.

The best no-BPTT DFA settings of the float RNN study (``docs/rnn.md``) run in the bit-exact
golden model (:mod:`dfa_engine.sim.golden_rnn`, ``docs/numerics.md`` section 13) next to their
*float twin*: the float reference (:class:`dfa_engine.rnn.RNN`, method ``dfa``) with the same
network, the same initial weights (the golden model's quantized ones), the same feedback
matrix (the golden model's ``B``), the same per-sequence SGD schedule (batch 1, sequences in
data-set order, no clipping), the same activation (hardtanh) and the same learning rates.

Learning rates (section 13.6): the golden model has a power-of-two rate per layer; the float
model one rate ``lr`` and a feedback ``scale``. Without momentum, ``lr * (scale * g)`` equals
``(lr * scale) * g``, so the recurrent layer gets ``lr_shift = base + S`` and the readout
``base``, with ``lr = 2^-base`` and ``scale = 2^-S`` in the float twin.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

#: (task, setting) -> (float-study entry, feedback kind, window, base lr shift, feedback scale shift S).
#: From the float study's best no-BPTT DFA entries (docs/rnn.md): mnist5k dense DFA to the last
#: 4 steps (lr 0.3 at batch 16 ~ 2^-6 per sequence, scale 0.01 ~ 2^-7) and sparse k=1 DFA to the
#: last 4 steps (lr 0.1 ~ 2^-7, scale 0.1 ~ 2^-3); digits dense DFA to the last step (lr 0.3 ~
#: 2^-6, scale 0.1 ~ 2^-3) and sparse to the last 4 steps (lr 0.3 ~ 2^-6, scale 0.1 ~ 2^-3).
SETTINGS = {
    ("mnist5k", "dense"): ("dfa_w4", "dense", 4, 6, 7),
    ("mnist5k", "sparse"): ("dfa_sparse_w4", "sparse", 4, 7, 3),
    # sparse with rates chosen for batch 1 on a validation split (benchmarks/study_rnn_fixed_tuning.py):
    # with the float study's rates above, two float runs of the same definition end up to 8 points apart
    ("mnist5k", "sparse_b1"): ("dfa_sparse_w4", "sparse", 4, 7, 5),
    ("digits", "dense"): ("dfa_last", "dense", 1, 6, 3),
    ("digits", "sparse"): ("dfa_sparse_w4", "sparse", 4, 6, 3),
    # the leaky cell with e-prop (section 13.9), dense feedback, every step: the float study's
    # dfa_trace (mnist5k lr 0.3 ~ 2^-6 per sequence, scale 0.1 ~ 2^-3; digits lr 0.3, scale 1)
    ("mnist5k", "leaky"): ("dfa_trace", "dense", "all", 6, 3),
    ("digits", "leaky"): ("dfa_trace", "dense", "all", 6, 0),
    # the leaky cell with alpha g at every step (network.trace = false): the float study's
    # dfa_leaky (mnist5k lr 0.3, scale 0.1; digits lr 0.3, scale 1)
    ("mnist5k", "leaky_window"): ("dfa_leaky", "dense", "all", 6, 3),
    ("digits", "leaky_window"): ("dfa_leaky", "dense", "all", 6, 0),
}
#: Formats: the MLP defaults with wide weights (the recurrent layer's rate is 2^-9 .. 2^-13 per
#: sequence, as the CNN's DFA layers needed s1.22); dense feedback in s0.7 (the float RNN study's
#: dense format, entries uniform in [-1, 1)), sparse +-1 in the MLP's s1.6.
FORMATS = {"input": "u0.8", "weight": "s1.22", "bias": "s3.22", "activation": "s5.10", "error": "s1.14",
           "feedback": "s1.6", "delta": "s1.14", "update": "s1.22", "learning_rate": "u0.16"}
FORMAT_SETS = {
    "wide_weights": FORMATS,
    "mlp_defaults": {"input": "u0.8", "weight": "s1.14", "bias": "s1.14", "activation": "s5.10", "error": "s1.14",
                     "feedback": "s1.6", "delta": "s1.14", "update": "s1.14", "learning_rate": "u0.16"},
}
DENSE_FEEDBACK_FORMAT = "s0.7"
TASK_SHAPE = {"mnist5k": (28, 28), "digits": (8, 8)}     # (steps, inputs)


def engine_dict(task: str, kind: str, formats=None, epochs: int = 10) -> dict:
    """The TOML-shaped dictionary of the fixed-point configuration of (task, feedback kind)."""
    from .study_rnn import HIDDEN

    _, fb_kind, window, base, s = SETTINGS[(task, kind)]
    steps, inputs = TASK_SHAPE[task]
    fmts = dict(FORMATS if formats is None else formats)
    if fb_kind == "dense":
        fmts["feedback"] = DENSE_FEEDBACK_FORMAT
        fb = {"kind": "dense", "values": "fixed", "seed": 1}
    else:
        fb = {"kind": "sparse", "k": 1, "values": "pm1", "seed": 1}
    network = {"inputs": inputs, "hidden": HIDDEN[task], "classes": 10, "steps": steps,
               "activation": "hardtanh", "method": "dfa", "window": window}
    from .study_rnn import ENTRIES, leak_max_shift_for

    over = ENTRIES[SETTINGS[(task, kind)][0]][1]
    if over.get("cell") == "leaky":         # the float study's leaky cell
        network.update(cell="leaky", leak_max_shift=leak_max_shift_for(steps), trace=over.get("window") == "trace")
    return {"network": network,
            "formats": fmts,
            "training": {"lr_shift": [base + s, base], "epochs": epochs, "seed": 0},
            "feedback": fb}


def engine_config(task: str, kind: str, formats=None, epochs: int = 10):
    from .rnn_config import rnn_config_from_dict

    return rnn_config_from_dict(engine_dict(task, kind, formats, epochs))


class _Default64:
    """Run a float twin in float64: :class:`dfa_engine.rnn.RNN` allocates its state with
    PyTorch's default dtype, so the default is switched around every call."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        import torch

        self.old = torch.get_default_dtype()
        if self.on:
            torch.set_default_dtype(torch.float64)

    def __exit__(self, *exc):
        import torch

        torch.set_default_dtype(self.old)


def float_twin(cfg, golden, dtype=None):
    """The float model (:class:`dfa_engine.rnn.RNN`, batch 1, no clipping) that ``cfg``
    computes in fixed point, starting from the golden model's raw parameters and ``B``
    (float32; ``dtype=torch.float64`` for a float64 twin, used inside ``_Default64(True)``)."""
    import torch

    dtype = torch.float32 if dtype is None else dtype

    from .rnn import RNN, RNNConfig, RNNFeedback

    if cfg.activation != "hardtanh":
        raise ValueError(f"the float twin needs network.activation = \"hardtanh\", not {cfg.activation!r}")
    if cfg.cell == "leaky" and cfg.trace and cfg.window != cfg.steps:
        raise ValueError(f"the float twin of the leaky cell's trace needs network.window = \"all\" (its "
                         f"eligibility trace reaches every step), not {cfg.window}")
    f = cfg.formats
    if cfg.lr_multiplier is not None:
        lr, scale_shift = float(f.learning_rate.to_float(f.learning_rate.from_float(cfg.lr_multiplier))), 0
    else:
        rec, base = cfg.lr_shift
        if rec < base:
            raise ValueError(f"lr_shift {list(cfg.lr_shift)} has no float twin: the recurrent layer's shift "
                             "must be the readout's plus the feedback scale shift S >= 0")
        lr, scale_shift = 2.0 ** -base, rec - base
    fcfg = RNNConfig(n_in=cfg.inputs, hidden=cfg.hidden, n_out=cfg.classes, activation="hardtanh", readout="last",
                     loss="xent", method="dfa", window="trace" if cfg.cell == "leaky" and cfg.trace else cfg.window,
                     cell=cfg.cell, leak_max_shift=cfg.leak_max_shift,
                     feedback=RNNFeedback(kind="dense", scale=1.0, seed=cfg.feedback.seed),
                     lr=lr, batch_size=1, clip=None, seed=cfg.seed)
    net = RNN(fcfg)
    p = golden.parameters()
    t = lambda v, fmt: torch.as_tensor(fmt.to_float(v), dtype=dtype)  # noqa: E731
    net.W_xh, net.W_hh, net.b_h = t(p["Wx"], f.weight), t(p["Wh"], f.weight), t(p["b1"], f.bias)
    net.W_hy, net.b_y = t(p["W2"], f.weight), t(p["b2"], f.bias)
    # the golden model's B (dense or sparse as a dense matrix), times the folded scale 2^-S
    net.B = torch.as_tensor(f.feedback.to_float(golden.B) * 2.0 ** -scale_shift, dtype=dtype)
    return net


def load(task: str, fin, quick: bool):
    from .data import load_dataset

    ds = load_dataset(task)
    steps, inputs = TASK_SHAPE[task]
    X = fin.from_float(ds.x_train).reshape(-1, steps, inputs)
    Xt = fin.from_float(ds.x_test).reshape(-1, steps, inputs)
    Y, Yt = np.asarray(ds.y_train), np.asarray(ds.y_test)
    if quick:
        X, Y, Xt, Yt = X[:300], Y[:300], Xt[:300], Yt[:300]
    return X, Y, Xt, Yt


def _mean(v):
    return float(np.mean(v)) if len(v) else float("nan")


def study(task="mnist5k", kinds=("dense", "sparse"), epochs=10, quick=False, format_sets=("wide_weights",),
          seeds=(0,), float64=True, quiet=False) -> dict:
    """Train the golden model, its float32 twin and (``float64``) a float64 twin for every
    (feedback kind, format set, seed). The float64 twin is the same float definition with
    rounding errors ~2^-53 instead of ~2^-24: how far it ends from the float32 twin is the
    run-to-run spread of the definition itself, the yardstick for the fixed-point gap."""
    import torch

    from .sim.golden_rnn import GoldenRNN

    results, t_start = [], time.perf_counter()
    last = min(5, epochs)
    for kind, fset, seed in [(k, f, s) for k in kinds for f in format_sets for s in seeds]:
        cfg = engine_config(task, kind, FORMAT_SETS[fset], epochs).with_(seed=seed)
        fin = cfg.formats.input
        X, Y, Xt, Yt = load(task, fin, quick)
        golden = GoldenRNN(cfg)
        p0 = golden.parameters()
        twins = {"float32": float_twin(cfg, golden)}
        if float64:
            with _Default64(True):
                twins["float64"] = float_twin(cfg, golden, torch.float64)
        curves = {"fixed": [], **{k: [] for k in twins}}
        secs = {k: 0.0 for k in curves}
        for ep in range(epochs):
            t0 = time.perf_counter()
            golden.train_epoch(X, Y)
            curves["fixed"].append(golden.evaluate(Xt, Yt))
            secs["fixed"] += time.perf_counter() - t0
            for name, twin in twins.items():
                t0 = time.perf_counter()
                with _Default64(name == "float64"):
                    dt = torch.float64 if name == "float64" else torch.float32
                    loss = twin.train_epoch(torch.as_tensor(fin.to_float(X), dtype=dt), torch.as_tensor(Y))
                    acc = twin.evaluate(torch.as_tensor(fin.to_float(Xt), dtype=dt), torch.as_tensor(Yt))
                curves[name].append(acc if loss == loss else 0.1)
                secs[name] += time.perf_counter() - t0
            if not quiet:
                print(f"  {task} {kind} {fset} seed {seed} epoch {ep + 1}: "
                      + "  ".join(f"{k} {v[-1]:.4f}" for k, v in curves.items()), file=sys.stderr, flush=True)
        p = golden.parameters()
        changed = {k: float(np.mean(p[k] != p0[k])) for k in ("Wx", "Wh", "W2")}
        entry, _, window, base, s = SETTINGS[(task, kind)]
        r = {
            "setting": kind, "seed": seed, "float_study_entry": entry, "feedback": cfg.to_dict()["feedback"],
            "window": window, "activation": cfg.activation, "lr_shift": list(cfg.lr_shift),
            "float_twin_lr": 2.0 ** -base, "float_twin_feedback_scale": 2.0 ** -s, "format_set": fset,
            "fixed_test_accuracy": curves["fixed"][-1], "float_twin_test_accuracy": curves["float32"][-1],
            "gap_points": round(100 * (curves["float32"][-1] - curves["fixed"][-1]), 2),
            f"fixed_mean_last_{last}": _mean(curves["fixed"][-last:]),
            f"float_twin_mean_last_{last}": _mean(curves["float32"][-last:]),
            f"gap_points_mean_last_{last}": round(100 * (_mean(curves["float32"][-last:])
                                                         - _mean(curves["fixed"][-last:])), 2),
            "fixed_curve": curves["fixed"], "float_twin_curve": curves["float32"],
        }
        if float64:
            r.update({"float64_twin_test_accuracy": curves["float64"][-1],
                      "float64_vs_float32_points": round(100 * (curves["float32"][-1] - curves["float64"][-1]), 2),
                      f"float64_vs_float32_points_mean_last_{last}": round(
                          100 * (_mean(curves["float32"][-last:]) - _mean(curves["float64"][-last:])), 2),
                      "float64_twin_curve": curves["float64"]})
        r.update({"weights_changed_fraction": changed, "saturation": dict(sorted(golden.stats.items())),
                  "formats": cfg.to_dict()["formats"], "seconds": {k: round(v, 1) for k, v in secs.items()}})
        results.append(r)
    summary = []
    for kind, fset in [(k, f) for k in kinds for f in format_sets]:
        rs = [r for r in results if r["setting"] == kind and r["format_set"] == fset]
        row = {"setting": kind, "format_set": fset, "seeds": [r["seed"] for r in rs],
               "fixed_mean": _mean([r["fixed_test_accuracy"] for r in rs]),
               "float_twin_mean": _mean([r["float_twin_test_accuracy"] for r in rs]),
               f"fixed_mean_last_{last}": _mean([r[f"fixed_mean_last_{last}"] for r in rs]),
               f"float_twin_mean_last_{last}": _mean([r[f"float_twin_mean_last_{last}"] for r in rs])}
        row["gap_points"] = round(100 * (row["float_twin_mean"] - row["fixed_mean"]), 2)
        row[f"gap_points_last_{last}"] = round(
            100 * (row[f"float_twin_mean_last_{last}"] - row[f"fixed_mean_last_{last}"]), 2)
        if float64:
            row["float64_twin_mean"] = _mean([r["float64_twin_test_accuracy"] for r in rs])
        row["within_1_point"] = abs(row["gap_points"]) <= 1.0
        summary.append(row)
    return {
        "task": task, "steps": TASK_SHAPE[task][0], "inputs": TASK_SHAPE[task][1],
        "hidden": cfg.hidden, "train_samples": int(len(X)), "test_samples": int(len(Xt)), "quick": quick,
        "epochs": epochs, "seeds": list(seeds), "last_epochs": last,
        "schedule": "per-sequence SGD (batch 1, no momentum, no clipping), sequences in data-set order, all models",
        "fixed": "dfa_engine.sim.golden_rnn.GoldenRNN (docs/numerics.md section 13), int64",
        "float_twin": "dfa_engine.rnn.RNN (method dfa, hardtanh), float32, batch 1, lr 2^-base, feedback scale 2^-S, "
                      "exact softmax, initial weights and B = the golden model's, inputs = the same quantized pixels",
        "float64_twin": "the same float twin in float64 (the spread of the float definition itself)" if float64
                        else None,
        "seconds": round(time.perf_counter() - t_start, 1),
        "summary": summary,
        "results": results,
    }


def format_table(report) -> str:
    from .study import _columns

    n = report["last_epochs"]
    rows = [("feedback", "float entry", "window", "lr_shift", "weight", "seed", "fixed", "float32 twin", "gap",
             "float64 twin", f"fixed last{n}", f"float32 last{n}", f"gap last{n}")]
    for r in report["results"]:
        rows.append((r["setting"], r["float_study_entry"], str(r["window"]), ",".join(map(str, r["lr_shift"])),
                     r["formats"]["weight"], str(r["seed"]), f"{r['fixed_test_accuracy']:.4f}",
                     f"{r['float_twin_test_accuracy']:.4f}", f"{r['gap_points']:+.2f}",
                     f"{r['float64_twin_test_accuracy']:.4f}" if "float64_twin_test_accuracy" in r else "-",
                     f"{r[f'fixed_mean_last_{n}']:.4f}", f"{r[f'float_twin_mean_last_{n}']:.4f}",
                     f"{r[f'gap_points_mean_last_{n}']:+.2f}"))
    out = _columns(rows)
    rows = [("feedback", "formats", "seeds", "fixed (mean)", "float32 twin (mean)", "gap", "within 1 point")]
    for r in report["summary"]:
        rows.append((r["setting"], r["format_set"], ",".join(map(str, r["seeds"])), f"{r['fixed_mean']:.4f}",
                     f"{r['float_twin_mean']:.4f}", f"{r['gap_points']:+.2f}", str(r["within_1_point"])))
    return out + "\n\n" + _columns(rows)


def run(args) -> int:
    import torch

    torch.set_num_threads(1)
    task = args.task
    if task not in TASK_SHAPE:
        print(f"error: --rnn --fixed runs on mnist5k or digits, not {task!r}", file=sys.stderr)
        return 2
    known = [k for t, k in SETTINGS if t == task]
    kinds = tuple(args.networks.split(",")) if getattr(args, "networks", None) else tuple(known)
    for k in kinds:
        if k not in known:
            print(f"error: --networks: {k!r} is not one of {', '.join(known)}", file=sys.stderr)
            return 2
    fsets = tuple(args.formats.split(",")) if getattr(args, "formats", None) else ("wide_weights",)
    for s in fsets:
        if s not in FORMAT_SETS:
            print(f"error: --formats: {s!r} is not one of {', '.join(FORMAT_SETS)}", file=sys.stderr)
            return 2
    seeds = tuple(int(v) for v in args.seeds.split(",")) if getattr(args, "seeds", None) else (0,)
    report = study(task, kinds, args.epochs, args.quick, fsets, seeds)
    print(format_table(report))
    print(f"\n{report['train_samples']} train / {report['test_samples']} test sequences, {args.epochs} epochs, "
          f"batch 1; {report['seconds']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"wrote {args.json}")
    return 0
