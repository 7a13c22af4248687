"""The golden model's expected results, computed beside the simulator rather than inside it.

The scoreboard needs, for every sample, the golden model's prediction, output error and
trained/rejected flags. Computing them inside the cocotb process would put the golden
model's Python on the simulator's core (a quarter of its time on the default engine).
Instead :func:`start_golden_worker` runs the model in a thread of the process that launched
the simulation (idle otherwise, and free to use the machine's other core) and appends one
fixed-size record per sample to a file; :class:`GoldenFeed`, in the cocotb process, reads
the records as they land. The simulator never waits for the golden model: a result whose
record is not there yet is checked as soon as it is, and at the end of the run the
scoreboard waits for the rest and for the final parameters.

Record of sample ``s`` (little-endian int64): ``prediction, trained, rejected, has_error,
e[0 .. n_classes-1]`` (``e`` is zero where the sample was not trained).
Files in the run directory: ``golden_results.i64`` (the records), ``golden_params.npz``
(``W1, b1, W2, ...`` after the last sample), ``golden_stats.json`` (saturation events),
``golden.done`` when all are written, ``golden.error`` (the traceback) if the model failed.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from .golden import GoldenModel

__all__ = ["start_golden_worker", "GoldenFeed", "GoldenFailed", "record_fields"]

RESULTS = "golden_results.i64"
PARAMS = "golden_params.npz"
STATS = "golden_stats.json"
DONE = "golden.done"
ERROR = "golden.error"


class GoldenFailed(RuntimeError):
    """The golden-model worker failed or did not finish in time."""


def record_fields(n_classes: int) -> int:
    """int64 values per record."""
    return 4 + n_classes


def golden_model(cfg):
    """The golden model of ``cfg``'s engine family (MLP or CNN)."""
    from dfa_engine.cnn_config import CNNEngineConfig
    from dfa_engine.rnn_config import RNNEngineConfig

    if isinstance(cfg, CNNEngineConfig):
        from .golden_cnn import GoldenCNN

        return GoldenCNN(cfg)
    if isinstance(cfg, RNNEngineConfig):
        from .golden_rnn import GoldenRNN

        return GoldenRNN(cfg)
    return GoldenModel(cfg)


def _expected(golden: GoldenModel, x, y: int, train: bool, n_classes: int) -> list:
    """The golden model's view of one sample, as the engine treats it: a training sample
    with a label outside the class range is rejected (inferred only, not trained)."""
    label_ok = 0 <= y < n_classes
    if train and label_ok:
        pred = golden.train_step(x, int(y))
        return [pred, 1, 0, 1, *(int(v) for v in golden.last_error)]
    return [golden.predict(x), 0, int(not label_ok), 0] + [0] * n_classes


def _worker(cfg, X, Y, train, run_dir: Path, stop: threading.Event):
    # One BLAS thread: the model's products are small, and idle OpenBLAS threads spin on
    # the core the simulator needs.
    with threadpool_limits(limits=1, user_api="blas"):
        _run_model(cfg, X, Y, train, run_dir, stop)


def _run_model(cfg, X, Y, train, run_dir: Path, stop: threading.Event):
    try:
        golden = golden_model(cfg)
        C = cfg.n_classes
        with open(run_dir / RESULTS, "wb", buffering=0) as fh:
            for s in range(len(X)):
                if stop.is_set():
                    return
                fh.write(np.asarray(_expected(golden, X[s], int(Y[s]), bool(train[s]), C), dtype="<i8").tobytes())
        params = {}
        final = golden.parameters()
        if isinstance(final, dict):           # the RNN's {Wx, Wh, b1, W2, b2}, as its host map lays them out
            from dfa_engine.hdl.rnn_engine import rnn_host_parameters

            final = rnn_host_parameters(final)
        for l, (W, b) in enumerate(final):
            params[f"W{l + 1}"], params[f"b{l + 1}"] = W.reshape(W.shape[0], -1), b   # as the host map reads W
        np.savez(run_dir / PARAMS, **params)
        (run_dir / STATS).write_text(json.dumps({"saturation_events": int(sum(golden.stats.values()))}))
        (run_dir / DONE).write_text("ok\n")
    except BaseException:   # reported to the scoreboard, which would otherwise wait for records
        (run_dir / ERROR).write_text(traceback.format_exc())


def start_golden_worker(cfg, X, Y, train, run_dir) -> tuple[threading.Thread, threading.Event]:
    """Start the golden model over all samples in a daemon thread; returns (thread, stop)."""
    run_dir = Path(run_dir)
    for name in (RESULTS, PARAMS, STATS, DONE, ERROR):
        (run_dir / name).unlink(missing_ok=True)
    (run_dir / RESULTS).touch()
    stop = threading.Event()
    thread = threading.Thread(target=_worker, args=(cfg, np.asarray(X), np.asarray(Y), np.asarray(train),
                                                    run_dir, stop), daemon=True, name="golden-model")
    thread.start()
    return thread, stop


class GoldenFeed:
    """The reader's side: the records written so far, without ever blocking the simulator."""

    def __init__(self, run_dir, n_classes: int):
        self.run_dir = Path(run_dir)
        self.width = record_fields(n_classes)
        self._fh = open(self.run_dir / RESULTS, "rb")
        self._buffer = b""
        self._blocks: list[np.ndarray] = []
        self.records = np.zeros((0, self.width), dtype=np.int64)

    def poll(self) -> int:
        """Take in every complete record written since the last call; returns how many there are."""
        self._buffer += self._fh.read()
        size = 8 * self.width
        whole = len(self._buffer) // size
        if whole:
            block = np.frombuffer(self._buffer[:whole * size], dtype="<i8").reshape(whole, self.width)
            self._buffer = self._buffer[whole * size:]
            self.records = np.concatenate([self.records, block.astype(np.int64)])
        self._raise_if_failed()
        return len(self.records)

    def _raise_if_failed(self):
        err = self.run_dir / ERROR
        if err.exists():
            raise GoldenFailed(f"the golden model failed:\n{err.read_text()}")

    def wait_finished(self, timeout_s: float):
        """Block until the worker has written everything (after the simulation is over)."""
        deadline = time.monotonic() + timeout_s
        while not (self.run_dir / DONE).exists():
            self._raise_if_failed()
            if time.monotonic() > deadline:
                raise GoldenFailed(f"the golden model did not finish within {timeout_s:.0f} s")
            time.sleep(0.01)
        self.poll()

    def parameters(self) -> list:
        """The golden model's final (W, b) per layer (after :meth:`wait_finished`)."""
        with np.load(self.run_dir / PARAMS) as data:
            n = len(data.files) // 2
            return [(data[f"W{l + 1}"], data[f"b{l + 1}"]) for l in range(n)]

    def saturation_events(self) -> int:
        return json.loads((self.run_dir / STATS).read_text())["saturation_events"]

    def close(self):
        self._fh.close()
