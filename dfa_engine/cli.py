"""The ``dfa-engine`` command.

Subcommands: ``rtl`` (the main job: the generated engine trained in Verilator against the
golden model), ``train`` (the golden model alone), ``generate`` (Verilog and engine.json),
``check`` (validate a configuration), ``build`` (bitstream and report for a board), ``study`` (the accuracy study), ``trace-diff`` (first
difference of two traces). A configuration
error is printed as one line (``error: field: value rule``) with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .config import ConfigError, load_engine_config

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
    """Train the bit-exact golden model on a real data set and report accuracy and speed;
    with --port, train a board over its host link instead and check it against the golden model."""
    from .data import load_dataset
    from .hdl.family import engine_family
    from .sim.golden_feed import golden_model

    cfg = load_engine_config(args.config)
    family = engine_family(cfg)
    if args.epochs is not None:
        cfg = cfg.with_(epochs=args.epochs)
    ds = load_dataset(args.dataset)
    if family.name == "mlp" and ds.n_features != cfg.layers[0]:
        raise ConfigError("network.layers[0]", cfg.layers[0],
                          f"must equal the {args.dataset} input size {ds.n_features}")
    if family.name != "mlp" and ds.n_features != family.n_inputs(cfg):
        field, value = (("network.input", list(cfg.input_shape)) if family.name == "cnn"
                        else ("network.steps", cfg.steps))
        raise ConfigError(field, value, f"must hold the {args.dataset} input size {ds.n_features} "
                          f"(the network reads {family.n_inputs(cfg)} values a sample)")
    if args.port is not None:
        if family.name != "mlp":
            print(f"error: --port: the host client drives MLP engines only; a {family.name.upper()} engine "
                  f"is simulated with dfa-engine rtl", file=sys.stderr)
            return 2
        from . import board_train

        return board_train.run(args, cfg, ds)
    n = len(ds.x_train) if args.samples is None else min(args.samples, len(ds.x_train))
    x_train = cfg.formats.input.from_float(ds.x_train[:n])
    x_test = cfg.formats.input.from_float(ds.x_test)
    if family.name == "cnn":
        x_train, x_test = (x.reshape(len(x), *cfg.input_shape) for x in (x_train, x_test))
    elif family.name == "rnn":        # row t of the image is step t
        x_train, x_test = (x.reshape(len(x), cfg.steps, cfg.inputs) for x in (x_train, x_test))
    model = golden_model(cfg)
    if family.name == "mlp":
        what = (f"{cfg.network_name}, methods {','.join(cfg.methods) or '-'}, "
                f"feedback {cfg.feedback.kind} k={cfg.feedback.k} {cfg.feedback.values}")
    else:
        what = f"{family.name.upper()} {cfg.network_name}, methods {','.join(cfg.methods) or '-'}"
    print(f"dfa-engine train: {what}, "
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


def _cmd_generate(args) -> int:
    """Generate the engine's Verilog and engine.json for a configuration."""
    from .gen.generate import generate

    cfg = load_engine_config(args.config)
    try:
        info = generate(cfg, args.output)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        # a valid configuration the engine cannot build (yet), e.g. stochastic update rounding
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = info["cycles_per_sample"]
    if info.get("family") in ("cnn", "rnn"):
        print(f"wrote {args.output}/{info['top']}.v and {args.output}/engine.json: {info['family'].upper()} "
              f"{cfg.network_name} ({','.join(cfg.methods) or '-'}), one MAC a cycle, "
              f"{c['train_sample']:,} cycles per training sample")
        return 0
    print(f"wrote {args.output}/{info['top']}.v and {args.output}/engine.json: {cfg.network_name}, "
          f"P = {cfg.lanes} lanes, about {c['train_sample']:,} cycles per training sample "
          f"({c['ratio_to_ideal']:.2f} x the ideal {c['ideal_train_sample']:,.0f})")
    return 0


def _cmd_rtl(args) -> int:
    """Generate the engine, train it in Verilator on real samples, check it against the golden model."""
    import numpy as np

    from .data import load_dataset
    from .gen.generate import estimate_cycles
    from .sim.verilator_run import train_then_infer

    from .hdl.family import engine_family

    cfg = load_engine_config(args.config)
    family = engine_family(cfg).name
    ds = load_dataset(args.dataset)
    n_in = engine_family(cfg).n_inputs(cfg)
    if ds.n_features != n_in:
        field, value = {"cnn": ("network.input", list(getattr(cfg, "input_shape", ()))),
                        "rnn": ("network.steps", getattr(cfg, "steps", None)),
                        "mlp": ("network.layers[0]", cfg.layers[0] if family == "mlp" else None)}[family]
        raise ConfigError(field, value, f"must hold the {args.dataset} input size {ds.n_features} "
                          f"(the engine reads {n_in} values a sample)")
    n_train = min(args.train_samples, len(ds.x_train))
    n_test = min(args.test_samples, len(ds.x_test))
    X = cfg.formats.input.from_float(np.concatenate([ds.x_train[:n_train], ds.x_test[:n_test]]))
    if family == "cnn":
        X = X.reshape(len(X), *cfg.input_shape)
    elif family == "rnn":
        X = X.reshape(len(X), cfg.steps, cfg.inputs)       # row t of the image is step t
    Y = np.concatenate([ds.y_train[:n_train], ds.y_test[:n_test]])
    if family == "rnn":
        fb = cfg.feedback
        print(f"dfa-engine rtl: RNN {cfg.network_name} (DFA through time, window {cfg.window} steps, feedback "
              f"{fb.kind} {fb.values}), one MAC a cycle; {args.dataset}: train on {n_train} sequences, "
              f"then infer {n_test} test sequences")
    elif family == "cnn":
        fb = cfg.feedback
        print(f"dfa-engine rtl: CNN {cfg.network_name} ({','.join(cfg.methods) or '-'}, sparse dilated feedback "
              f"d={fb.d} k={fb.k} groups={fb.groups} {fb.values}), one MAC a cycle; {args.dataset}: "
              f"train on {n_train} samples, then infer {n_test} test samples")
    else:
        print(f"dfa-engine rtl: {cfg.network_name} ({','.join(cfg.methods) or '-'}, feedback {cfg.feedback.kind} "
              f"k={cfg.feedback.k} {cfg.feedback.storage}), P = {cfg.lanes} lanes; {args.dataset}: "
              f"train on {n_train} samples, then infer {n_test} test samples")
    print("generating Verilog and building it with Verilator (cached per configuration) ...", flush=True)
    bar = ProgressBar(n_train + n_test, "simulating", force=args.progress)
    summary = train_then_infer(cfg, X, Y, n_train, tag="main", progress=bar,
                               on_built=lambda seconds: print(f"built in {seconds:.0f} s", flush=True))
    bar(n_train + n_test)
    per_train, acc, bit_exact = summary["cycles_per_train_sample"], summary["test_accuracy"], summary["bit_exact"]
    if family != "mlp":
        from .gen.generate import loopnest_engine_info

        est = loopnest_engine_info(cfg)["cycles_per_sample"]
    else:
        est = estimate_cycles(cfg)
    if n_test:
        print(f"test accuracy (RTL, {n_test} samples after {n_train} training samples): {acc:.4f}")
    else:
        print(f"no test samples asked for (trained on {n_train})")
    if n_train > 1 and family != "mlp":
        print(f"cycles per training sample: {per_train:,.0f} "
              f"(the schedule: {est['train_sample']:,}, of which {est['terms_per_sample']:,} loop terms)")
    elif n_train > 1:
        print(f"cycles per training sample: {per_train:,.0f} "
              f"(ideal (forward + update MACs) / P = {est['ideal_train_sample']:,.0f})")
    print(f"simulated {summary['cycles']:,} cycles in {summary['wall_seconds']:.1f} s "
          f"({summary['sim_cycles_per_second']:,.0f} cycles/s)")
    print(f"bit-exact against the golden model: {'yes' if bit_exact else 'no'}")
    if not bit_exact:
        print(f"first difference: {summary['mismatch']}")
        return 1
    return 0


def _cmd_build(args) -> int:
    """Estimate resources and speed, check the fit, build the bitstream with Yosys and
    nextpnr (YoWASP), and write DIR/report.json (docs/boards.md)."""
    from .gen.build import FitError, build

    cfg = load_engine_config(args.config)
    try:
        report = build(cfg, args.board, args.output, freq_mhz=args.freq, baud=args.baud,
                       check=not args.no_fit_check, seed=args.seed)
    except (FitError, ValueError) as exc:     # does not fit; a clock or baud rate out of reach
        if isinstance(exc, ConfigError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if report["status"] == "ok" else 1


def _cmd_check(args) -> int:
    """Validate a configuration and print it, with the derived widths."""
    cfg = load_engine_config(args.config)
    d = cfg.to_dict()
    d["derived"] = {"accumulator_bits_required": [cfg.required_accumulator_bits(l) for l in range(cfg.n_layers)]}
    if hasattr(cfg, "dfa_share"):
        d["derived"]["dfa_share"] = cfg.dfa_share()
    else:
        from .gen.generate import loopnest_engine_info

        d["derived"]["network"] = cfg.network_name
        d["derived"]["engine_cycles_per_sample"] = loopnest_engine_info(cfg)["cycles_per_sample"]
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
    p.add_argument("--port", metavar="DEV", help="train a board on this serial port over its host link "
                   "(docs/host_link.md; one epoch unless --epochs), compare with the golden model")
    p.add_argument("--baud", type=int, default=115200, help="with --port: the link's baud rate (default 115200)")
    p.add_argument("--test-samples", type=int, metavar="M", help="with --port: infer the first M test samples only")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("rtl", help="generate the engine, train it in Verilator, compare with the golden model",
                       description=_cmd_rtl.__doc__)
    p.add_argument("config", nargs="?", help="configuration TOML (default: the built-in default)")
    p.add_argument("--dataset", choices=("mnist5k", "digits"), default="mnist5k")
    p.add_argument("--train-samples", type=int, default=1000, help="training samples (default 1000)")
    p.add_argument("--test-samples", type=int, default=500, help="test samples to infer afterwards (default 500)")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    p.set_defaults(func=_cmd_rtl)

    p = sub.add_parser("generate", help="write the engine's Verilog and engine.json",
                       description=_cmd_generate.__doc__)
    p.add_argument("config", nargs="?", help="configuration TOML (default: the built-in default)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("build", help="estimate, check the fit and build a bitstream for a board",
                       description=_cmd_build.__doc__)
    p.add_argument("config", nargs="?", help="configuration TOML (default: the built-in default)")
    p.add_argument("--board", required=True,
                   choices=("icebreaker", "ulx3s-12f", "ulx3s-25f", "ulx3s-45f", "ulx3s-85f"))
    p.add_argument("--freq", type=float, help="system clock in MHz (default: 24 on icebreaker, 50 on ulx3s)")
    p.add_argument("--baud", type=int, default=115200, help="UART baud rate (default 115200)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--no-fit-check", action="store_true", help="run the tools even where the estimate says it cannot fit")
    p.add_argument("--seed", type=int, help="nextpnr placement seed (default: nextpnr's own)")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("check", help="validate a configuration and print it with derived widths",
                       description=_cmd_check.__doc__)
    p.add_argument("config", nargs="?", help="configuration TOML (default: the built-in default)")
    p.add_argument("--config", dest="config_opt", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("study", help="accuracy study: float BP/DFA/sparse/hybrid and the fixed-point model")
    from . import study

    study.add_arguments(p)
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
