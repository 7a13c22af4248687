"""The ``dfa-engine`` command.

Subcommands: ``train`` (the main job), ``check`` (validate a configuration), ``study``
(the accuracy study), ``trace-diff`` (first difference of two traces). A configuration
error is printed as one line (``error: field: value rule``) with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .config import ConfigError, load_config

__all__ = ["main"]


class ProgressBar:
    """A one-line text progress bar on stderr (silent when stderr is not a terminal
    unless ``force``), cheap enough to call once per sample."""

    def __init__(self, total: int, label: str, stream=None, force: bool = False):
        self.total, self.label = total, label
        self.stream = stream or sys.stderr
        self.enabled = force or self.stream.isatty()
        self.start = time.perf_counter()
        self._last = -1

    def __call__(self, done: int):
        if not self.enabled:
            return
        pct = done * 100 // self.total
        if pct == self._last and done != self.total:
            return
        self._last = pct
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        bar = "#" * (pct // 4) + "." * (25 - pct // 4)
        self.stream.write(f"\r{self.label} [{bar}] {pct:3d}% {done}/{self.total} {rate:,.0f} samples/s")
        if done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def _cmd_train(args) -> int:
    """Train the bit-exact golden model on a real data set and report accuracy and speed."""
    from .data import load_dataset
    from .sim.golden import GoldenModel

    cfg = load_config(args.config)
    if args.epochs is not None:
        cfg = cfg.with_(epochs=args.epochs)
    ds = load_dataset(args.dataset)
    if ds.n_features != cfg.layers[0]:
        raise ConfigError("network.layers[0]", cfg.layers[0],
                          f"must equal the {args.dataset} input size {ds.n_features}")
    n = len(ds.x_train) if args.samples is None else min(args.samples, len(ds.x_train))
    x_train = cfg.formats.input.from_float(ds.x_train[:n])
    x_test = cfg.formats.input.from_float(ds.x_test)
    model = GoldenModel(cfg)
    print(f"dfa-engine train: {cfg.network_name}, methods {','.join(cfg.methods) or '-'}, "
          f"feedback {cfg.feedback.kind} k={cfg.feedback.k} {cfg.feedback.values}, "
          f"{args.dataset} ({n} train / {len(ds.x_test)} test), {cfg.epochs} epochs, bit-exact golden model")
    history = []
    for epoch in range(cfg.epochs):
        bar = ProgressBar(n, f"epoch {epoch + 1}/{cfg.epochs}", force=args.progress)
        t0 = time.perf_counter()
        train_acc = model.train_epoch(x_train, ds.y_train[:n], progress=bar)
        seconds = time.perf_counter() - t0
        test_acc = model.evaluate(x_test, ds.y_test)
        history.append({"epoch": epoch + 1, "train_accuracy": train_acc, "test_accuracy": test_acc,
                        "samples_per_second": n / seconds})
        print(f"epoch {epoch + 1:3d}: train {train_acc:.4f}  test {test_acc:.4f}  "
              f"({n / seconds:,.0f} samples/s)")
    sat = ", ".join(f"{k}={v}" for k, v in sorted(model.stats.items())) or "none"
    print(f"test accuracy: {history[-1]['test_accuracy']:.4f}")
    print(f"saturation events: {sat}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": cfg.to_dict(), "dataset": args.dataset, "history": history,
                       "saturation": model.stats}, fh, indent=2)
    return 0


def _cmd_check(args) -> int:
    """Validate a configuration and print it, with the derived widths."""
    cfg = load_config(args.config)
    d = cfg.to_dict()
    d["derived"] = {"accumulator_bits_required": [cfg.required_accumulator_bits(l) for l in range(cfg.n_layers)],
                    "dfa_share": cfg.dfa_share()}
    print(json.dumps(d, indent=2))
    return 0


def _cmd_trace_diff(args) -> int:
    from .sim.trace import Trace, first_difference

    diff = first_difference(Trace.load(args.a), Trace.load(args.b))
    if diff is None:
        print("traces agree")
        return 0
    print(diff)
    return 1


def _cmd_study(args) -> int:
    from . import study

    return study.run(args) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfa-engine", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train the bit-exact golden model on a real data set (the main job)",
                       description=_cmd_train.__doc__)
    p.add_argument("config", nargs="?", help="configuration TOML (default: the built-in default)")
    p.add_argument("--config", dest="config_opt", help=argparse.SUPPRESS)
    p.add_argument("--dataset", choices=("mnist5k", "digits"), default="mnist5k")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--samples", type=int, help="train on the first N training samples only")
    p.add_argument("--json", help="write the training history to this JSON file")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("check", help="validate a configuration and print it with derived widths",
                       description=_cmd_check.__doc__)
    p.add_argument("config", nargs="?", help="configuration TOML (default: the built-in default)")
    p.add_argument("--config", dest="config_opt", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("study", help="accuracy study: float BP/DFA/sparse/hybrid and the fixed-point model")
    try:
        from . import study

        study.add_arguments(p)
    except ImportError:  # pragma: no cover - study module is part of the package
        pass
    p.set_defaults(func=_cmd_study)

    p = sub.add_parser("trace-diff", help="name the first differing value of two traces (.npz)")
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(func=_cmd_trace_diff)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config_opt", None) is not None:
        args.config = args.config_opt
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
