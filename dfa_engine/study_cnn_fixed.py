"""The fixed-point CNN entry of the study: ``dfa-engine study --cnn --fixed``.

The best DFA variant of the float CNN study (``docs/cnn.md``: the hybrid, DFA with the sparse
dilated feedback on the lower conv layers and BP above) runs in the bit-exact golden model
(:mod:`dfa_engine.sim.golden_cnn`, ``docs/numerics.md`` section 12) next to its *float twin*:
the float reference (:mod:`dfa_engine.cnn`) with the same network, the same initial weights
(the golden model's quantized ones), the same feedback table, the same per-sample SGD
schedule (batch 1, samples in data-set order) and the same learning rates.

Learning rates: the golden model has one power-of-two rate per layer (``lr_shift``); the float
model one rate ``lr`` and a feedback ``scale``. Without momentum, ``lr * (scale * g)`` equals
``(lr * scale) * g``, so the scale ``2^-S`` folds into the learning rate of every layer whose
delta derives from ``B e`` (the DFA layers and any BP layer below one): those layers get
``lr_shift = base + S``, the layers with the true gradient ``base``. :func:`float_twin` checks
that a configuration follows this rule.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

#: name -> (layers, methods of the non-output conv/dense layers, activation, base lr_shift,
#: feedback scale shift S). From the float study's best DFA variant per network (hybrid /
#: module B, hardtanh, lr 0.2 at batch 16 = 0.0125 per sample ~ 2^-6, scale 1e-3 ~ 2^-10 and
#: 1e-4 ~ 2^-13).
NETWORKS = {
    "2conv": ([("conv", 8), ("maxpool", 2), ("conv", 16), ("maxpool", 2)], ("dfa", "bp"), "hardtanh", 6, 10),
    "4conv": ([("conv", 16), ("conv", 16), ("maxpool", 2), ("conv", 32), ("conv", 32), ("maxpool", 2)],
              ("dfa", "dfa", "bp", "bp"), "hardtanh", 6, 13),
}
#: The sparse dilated feedback of the float study.
FEEDBACK = {"d": 2, "k": 1, "groups": 2, "values": "pm1", "seed": 1}
#: Formats: the MLP defaults with wider weights (the DFA layers' rate is 2^-16 .. 2^-19 per
#: sample, so their updates need fraction bits below the MLP's 2^-14) and the accumulators
#: they imply.
FORMATS = {"input": "u0.8", "weight": "s1.22", "bias": "s1.22", "activation": "s5.10", "error": "s1.14",
           "feedback": "s1.6", "delta": "s1.14", "update": "s1.22", "learning_rate": "u0.16"}
#: The format sets the study runs: the chosen one, and the MLP's defaults for comparison.
FORMAT_SETS = {
    "wide_weights": FORMATS,
    "mlp_defaults": {"input": "u0.8", "weight": "s1.14", "bias": "s1.14", "activation": "s5.10", "error": "s1.14",
                     "feedback": "s1.6", "delta": "s1.14", "update": "s1.14", "learning_rate": "u0.16"},
}


def engine_dict(network: str, formats=None, epochs: int = 10) -> dict:
    """The TOML-shaped dictionary of the fixed-point configuration of ``network``."""
    layers, methods, act, base, s = NETWORKS[network]
    entries, m = [], iter(methods)
    for kind, n in layers:
        if kind == "conv":
            entries.append({"type": "conv", "channels": n, "kernel": 3, "stride": 1, "padding": 1, "groups": 1,
                            "method": next(m)})
        else:
            entries.append({"type": kind, "size": n})
    entries += [{"type": "flatten"}, {"type": "dense", "features": 10}]
    true = _true_gradient(methods)
    shifts = [base if t else base + s for t in true] + [base]
    return {"network": {"input": [1, 28, 28], "activation": act, "layers": entries},
            "formats": dict(FORMATS if formats is None else formats),
            "training": {"lr_shift": shifts, "epochs": epochs, "seed": 0},
            "feedback": dict(FEEDBACK)}


def engine_config(network: str, formats=None, epochs: int = 10):
    from .cnn_config import cnn_config_from_dict

    return cnn_config_from_dict(engine_dict(network, formats, epochs))


def _true_gradient(methods) -> list:
    out, above = [], True
    for m in reversed(methods):
        above = above and m == "bp"
        out.append(above)
    return out[::-1]


def float_spec(cfg) -> str:
    """The float model's spec string of a :class:`~dfa_engine.cnn_config.CNNEngineConfig`."""
    toks = []
    for s in cfg.layers:
        if s.type == "conv":
            toks.append(f"conv{s.channels}k{s.kernel}s{s.stride}p{s.padding}g{s.groups}")
        elif s.type == "maxpool":
            toks.append(f"mp{s.size}")
        elif s.type == "avgpool":
            toks.append(f"ap{s.size}")
        elif s.type == "dense":
            toks.append(f"fc{s.channels}")
    return "-".join(toks)


def float_twin(cfg, params):
    """The float model (:class:`dfa_engine.cnn.CNN`, batch 1) that ``cfg`` computes in fixed
    point, starting from the raw parameters ``params``."""
    import torch

    from .cnn import CNN, CNNConfig, FeedbackSpec

    f = cfg.formats
    if cfg.lr_multiplier is not None:
        lr, scale_shift = float(f.learning_rate.to_float(f.learning_rate.from_float(cfg.lr_multiplier))), 0
    else:
        base = cfg.lr_shift[-1]
        true = _true_gradient(cfg.methods) + [True]
        scale_shift = max((s - base for s, t in zip(cfg.lr_shift, true) if not t), default=0)
        want = [base if t else base + scale_shift for t in true]
        if list(cfg.lr_shift) != want:
            raise ValueError(f"lr_shift {list(cfg.lr_shift)} has no float twin: it must be {want} "
                             "(base for true-gradient layers, base + S for those fed by B e)")
        lr = 2.0 ** -base
    fb = cfg.feedback
    spec = FeedbackSpec(kind="sparse_dilated", k=fb.k, d=fb.d, groups=fb.groups, values=fb.values,
                        max_shift=fb.max_shift, scale=2.0 ** -scale_shift, storage=fb.storage, seed=fb.seed)
    fcfg = CNNConfig(spec=float_spec(cfg), in_shape=tuple(cfg.input_shape), n_classes=cfg.n_classes,
                     activation=cfg.activation, feedback=spec, sources=tuple(cfg.methods), lr=lr, batch_size=1,
                     seed=cfg.seed)
    net = CNN(fcfg)
    with torch.no_grad():
        for blk, (W, b) in zip(net.blocks, params):
            blk.layer.weight.copy_(torch.as_tensor(f.weight.to_float(W), dtype=torch.float32))
            blk.layer.bias.copy_(torch.as_tensor(f.bias.to_float(b), dtype=torch.float32))
    return net


def study(networks=("2conv", "4conv"), epochs=10, quick=False, format_sets=tuple(FORMAT_SETS), quiet=False) -> dict:
    import torch

    from .data import load_dataset
    from .sim.golden_cnn import GoldenCNN

    ds = load_dataset("mnist5k")
    results, t_start = [], time.perf_counter()
    for network, fset in [(n, s) for n in networks for s in format_sets]:
        cfg = engine_config(network, FORMAT_SETS[fset], epochs)
        fin = cfg.formats.input
        X = fin.from_float(ds.x_train).reshape(-1, 1, 28, 28)
        Xt = fin.from_float(ds.x_test).reshape(-1, 1, 28, 28)
        Y, Yt = ds.y_train, ds.y_test
        if quick:
            X, Y, Xt, Yt = X[:300], Y[:300], Xt[:300], Yt[:300]
        golden = GoldenCNN(cfg)
        W0 = [W.copy() for W, _ in golden.parameters()]
        twin = float_twin(cfg, golden.parameters())
        # the twin sees the same (quantized) pixels as float values
        Xf = torch.as_tensor(fin.to_float(X), dtype=torch.float32)
        Xtf = torch.as_tensor(fin.to_float(Xt), dtype=torch.float32)
        Yf, Ytf = torch.as_tensor(Y), torch.as_tensor(Yt)
        fixed_curve, float_curve, t_fixed, t_float = [], [], 0.0, 0.0
        for ep in range(epochs):
            t0 = time.perf_counter()
            golden.train_epoch(X, Y)
            fixed_curve.append(golden.evaluate(Xt, Yt))
            t1 = time.perf_counter()
            loss = twin.train_epoch(Xf, Yf)
            float_curve.append(twin.evaluate(Xtf, Ytf) if loss == loss else 0.1)
            t2 = time.perf_counter()
            t_fixed, t_float = t_fixed + t1 - t0, t_float + t2 - t1
            if not quiet:
                print(f"  {network} {fset} epoch {ep + 1}: fixed {fixed_curve[-1]:.4f}  float twin {float_curve[-1]:.4f}  "
                      f"({t1 - t0:.0f} s + {t2 - t1:.0f} s)", file=sys.stderr, flush=True)
        params = golden.parameters()
        changed = [float(np.mean(W != W0[l])) for l, (W, _) in enumerate(params)]
        moved = [float(np.abs(W - W0[l]).mean() / max(np.abs(W0[l]).mean(), 1)) for l, (W, _) in enumerate(params)]
        results.append({
            "network": network, "format_set": fset, "float_spec": float_spec(cfg), "methods": list(cfg.methods),
            "activation": cfg.activation, "lr_shift": list(cfg.lr_shift),
            "feedback_scale_shift": NETWORKS[network][4],
            "fixed_test_accuracy": fixed_curve[-1], "float_twin_test_accuracy": float_curve[-1],
            "gap_points": round(100 * (float_curve[-1] - fixed_curve[-1]), 2),
            "fixed_curve": fixed_curve, "float_twin_curve": float_curve,
            "weights_changed_fraction": changed,
            "weights_mean_abs_change_vs_initial": moved,
            "saturation": dict(sorted(golden.stats.items())),
            "formats": {k: v for k, v in cfg.to_dict()["formats"].items()},
            "seconds_fixed": round(t_fixed, 1), "seconds_float": round(t_float, 1),
        })
    return {
        "dataset": "mnist5k", "train_samples": int(len(X)), "test_samples": int(len(Xt)), "quick": quick,
        "epochs": epochs,
        "schedule": "per-sample SGD (batch 1, no momentum), samples in data-set order, both models",
        "fixed": "dfa_engine.sim.golden_cnn.GoldenCNN (docs/numerics.md section 12), int64",
        "float_twin": "dfa_engine.cnn.CNN, float32, batch 1, lr 2^-base, feedback scale 2^-S, exact softmax, "
                      "initial weights = the golden model's quantized ones, inputs = the same quantized pixels",
        "feedback": dict(FEEDBACK),
        "seconds": round(time.perf_counter() - t_start, 1),
        "results": results,
    }


def format_table(report) -> str:
    from .study import _columns

    rows = [("network", "methods", "lr_shift", "formats", "weight", "fixed", "float twin", "gap (points)")]
    for r in report["results"]:
        rows.append((r["network"], "/".join(r["methods"]), ",".join(map(str, r["lr_shift"])), r["format_set"],
                     r["formats"]["weight"],
                     f"{r['fixed_test_accuracy']:.4f}", f"{r['float_twin_test_accuracy']:.4f}",
                     f"{r['gap_points']:+.2f}"))
    return _columns(rows)


def run(args) -> int:
    import torch

    torch.set_num_threads(1)
    networks = tuple(args.networks.split(",")) if getattr(args, "networks", None) else tuple(NETWORKS)
    for n in networks:
        if n not in NETWORKS:
            print(f"error: --networks: {n!r} is not one of {', '.join(NETWORKS)}", file=sys.stderr)
            return 2
    report = study(networks, args.epochs, args.quick)
    print(format_table(report))
    print(f"\n{report['train_samples']} train / {report['test_samples']} test samples, {args.epochs} epochs, "
          f"batch 1; {report['seconds']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"wrote {args.json}")
    return 0
