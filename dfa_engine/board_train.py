"""``dfa-engine train --port DEV``: train a board over its host link, check it against the
golden model.

The board (any top built from ``boards/top.py``) is loaded with the configuration's
initial parameters (``HostClient.write_all_params``), trained on the data set one sample
a frame, made to infer the test samples, and read back whole. The golden model takes the
same steps on the host, so each result (prediction and output error) and the final
weights and biases are compared exactly.

Errors a user can cause (no such port, pyserial missing, a board that does not answer or
refuses an access) end the command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from dfa_engine.config import EngineConfig
from dfa_engine.feedback import initial_parameters
from dfa_engine.host import EngineError, HostClient, LinkError, open_serial
from dfa_engine.link_format import TO_BOARD, TO_HOST, LinkFormat

__all__ = ["train_on_board", "serial_timeout", "run"]


def serial_timeout(cfg: EngineConfig, baud: int) -> float:
    """Read timeout for a serial port: one second past the time the longest request and
    the longest response take on the line (10 bits a byte, every byte stuffed)."""
    fmt = LinkFormat(cfg)
    return 1.0 + 2 * 10 * (fmt.max_frame(TO_BOARD) + fmt.max_frame(TO_HOST) + 4) / baud


def _first_difference(got: dict, golden, x, label, train: bool):
    """The golden model's step for this sample; a description of the first difference from
    the board's result ``got``, or None."""
    if train:
        pred = golden.train_step(x, label)
        e = golden.last_error
    else:
        y = golden.forward(x)[0][-1]
        pred = int(np.argmax(y))
        e = golden.output_error(y, 0)       # an inference's e is formed against label 0
    if got["prediction"] != pred:
        return f"prediction {got['prediction']} != golden {pred}"
    for c, (a, b) in enumerate(zip(got["e"], e)):
        if a != b:
            return f"e[{c}] {a} != golden {int(b)}"
    return None


def train_on_board(client: HostClient, X, Y, X_test, Y_test, *, epochs: int = 1, progress=None) -> dict:
    """Load, train, evaluate and read back a board; the golden model takes the same steps.

    Parameters
    ----------
    client : HostClient
    X, Y : training samples (raw input format) and labels
    X_test, Y_test : test samples and labels (inferred, not trained)
    epochs : int
    progress : callable(epoch) -> callable(done), optional
        Makes a progress callback for each epoch.

    Returns a dict: ``train_accuracy`` (per epoch), ``test_accuracy``, ``samples_per_second``
    (training, over the link), ``load_seconds``, ``read_seconds``, ``mismatch`` (the first
    result that differed from the golden model's, or None), ``params_equal``, ``counters``
    (the engine's), ``link`` (the board's link counters).
    """
    from dfa_engine.sim.golden import GoldenModel

    cfg = client.cfg
    golden = GoldenModel(cfg)
    mismatch = None
    t0 = time.perf_counter()
    client.write_all_params(initial_parameters(cfg))
    load_seconds = time.perf_counter() - t0
    train_acc, train_seconds = [], 0.0
    for epoch in range(epochs):
        bar = progress(epoch) if progress is not None else None
        correct = 0
        t0 = time.perf_counter()
        for s in range(len(X)):
            res = client.train(X[s], int(Y[s]))
            correct += res["prediction"] == Y[s]
            diff = _first_difference(res, golden, X[s], int(Y[s]), True)
            if diff is not None and mismatch is None:
                mismatch = f"epoch {epoch + 1}, training sample {s}: {diff}"
            if bar is not None:
                bar(s + 1)
        train_seconds += time.perf_counter() - t0
        train_acc.append(correct / max(len(X), 1))
    correct = 0
    for s in range(len(X_test)):
        res = client.infer(X_test[s])
        correct += res["prediction"] == Y_test[s]
        diff = _first_difference(res, golden, X_test[s], 0, False)
        if diff is not None and mismatch is None:
            mismatch = f"test sample {s}: {diff}"
    t0 = time.perf_counter()
    params = client.read_all_params()
    read_seconds = time.perf_counter() - t0
    params_equal = True
    for layer, ((W, b), (Wg, bg)) in enumerate(zip(params, golden.parameters())):
        if params_equal and not np.array_equal(W, Wg):
            i, j = np.argwhere(W != Wg)[0]
            params_equal = False
            mismatch = mismatch or f"final W{layer + 1}[{i}, {j}]: {W[i, j]} != golden {Wg[i, j]}"
        if params_equal and not np.array_equal(b, bg):
            i = np.flatnonzero(b != bg)[0]
            params_equal = False
            mismatch = mismatch or f"final b{layer + 1}[{i}]: {b[i]} != golden {bg[i]}"
    return {"train_accuracy": train_acc, "test_accuracy": correct / len(X_test) if len(X_test) else None,
            "samples_per_second": epochs * len(X) / train_seconds if train_seconds > 0 else None,
            "load_seconds": load_seconds, "read_seconds": read_seconds, "mismatch": mismatch,
            "params_equal": params_equal, "counters": client.read_counters(), "link": client.link_status()}


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run(args, cfg: EngineConfig, ds) -> int:
    """The ``--port`` branch of ``dfa-engine train`` (``args``: port, baud, epochs, samples,
    test_samples, progress, json); ``ds`` is the loaded data set. Returns the exit status:
    0 bit-exact, 1 not, 2 an error (printed as one line)."""
    from dfa_engine.cli import ProgressBar

    n = len(ds.x_train) if args.samples is None else min(args.samples, len(ds.x_train))
    m = len(ds.x_test) if args.test_samples is None else min(args.test_samples, len(ds.x_test))
    epochs = 1 if args.epochs is None else args.epochs
    X, X_test = cfg.formats.input.from_float(ds.x_train[:n]), cfg.formats.input.from_float(ds.x_test[:m])
    if args.baud <= 0:
        return _error(f"--baud: {args.baud} must be a positive number of bits per second")
    try:
        port = open_serial(args.port, args.baud, timeout=serial_timeout(cfg, args.baud))
    except ImportError:
        return _error("--port needs pyserial: pip install pyserial")
    except (OSError, ValueError) as exc:       # serial.SerialException is an OSError
        reason = os.strerror(exc.errno) if getattr(exc, "errno", None) else str(exc)
        return _error(f"cannot open {args.port}: {reason}")
    print(f"dfa-engine train --port {args.port}: {cfg.network_name}, {args.dataset} ({n} train / {m} test), "
          f"{epochs} epoch(s) over the link at {args.baud} baud, checked against the bit-exact golden model")
    client = HostClient(port, cfg)
    try:
        with port:
            summary = train_on_board(client, X, ds.y_train[:n], X_test, ds.y_test[:m], epochs=epochs,
                                     progress=lambda e: ProgressBar(n, f"epoch {e + 1}/{epochs}", force=args.progress))
    except LinkError as exc:
        return _error(f"the board on {args.port} did not answer: {exc}")
    except EngineError as exc:
        return _error(f"the board on {args.port} refused an access: {exc}")
    except OSError as exc:
        return _error(f"{args.port}: {exc}")
    print(f"loaded the initial parameters in {summary['load_seconds']:.1f} s")
    for epoch, acc in enumerate(summary["train_accuracy"]):
        print(f"epoch {epoch + 1:3d}: train {acc:.4f}")
    if summary["samples_per_second"] is not None:
        print(f"training over the link: {summary['samples_per_second']:,.1f} samples/s")
    if summary["test_accuracy"] is not None:
        print(f"test accuracy: {summary['test_accuracy']:.4f} ({m} samples inferred on the board)")
    print("link counters: " + ", ".join(f"{k} {v}" for k, v in summary["link"].items()))
    print("engine counters: " + ", ".join(f"{k} {v}" for k, v in summary["counters"].items()))
    bit_exact = summary["mismatch"] is None and summary["params_equal"]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": cfg.to_dict(), "dataset": args.dataset, "port": args.port, "baud": args.baud,
                       "train_samples": n, "test_samples": m, "epochs": epochs, "bit_exact": bit_exact,
                       **summary}, fh, indent=2)
    print(f"bit-exact against the golden model: {'yes' if bit_exact else 'no'}")
    if not bit_exact:
        print(f"first difference: {summary['mismatch']}")
        return 1
    return 0
