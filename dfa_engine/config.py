"""The one configuration of an engine: network, formats, training, feedback, hardware.

A TOML file (see ``dfa_engine/configs/default.toml``) is parsed as data only (``tomllib``,
no evaluation), every field is checked, and the result is a frozen :class:`EngineConfig`
that the golden model, the float reference, the generator and the testbenches all take.

An invalid file raises :class:`ConfigError` whose message is one line naming the field,
the value and the rule, e.g. ``feedback.k: 0 is out of range; must be 1 <= k <= 10``.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

from .fixed import ROUNDING_MODES, FixedFormat

__all__ = ["ConfigError", "EngineConfig", "Formats", "FeedbackConfig", "load_config", "load_engine_config",
           "default_config", "config_from_dict", "validate_formats", "ACTIVATIONS", "METHODS"]

ACTIVATIONS = ("relu", "hardtanh")
METHODS = ("dfa", "bp")
FEEDBACK_KINDS = ("dense", "sparse")
FEEDBACK_VALUES = ("pm1", "pow2", "fixed")
FEEDBACK_STORAGE = ("table", "lfsr")
#: "auto": dual-port weight memories (block RAM, LUT RAM or logic, as the synthesis tool maps
#: them); "spram": single-port weight memories, SB_SPRAM256KA on iCE40 UP devices (hdl/memory.py)
MEMORY_KINDS = ("auto", "spram")
#: "two_pass": per sample, a forward pass and an update pass over the weights.
#: "one_pass": the update of sample n is fused with the forward pass of sample n + 1 (each
#: weight read once, updated, written back and multiplied; SGD order unchanged).
SCHEDULES = ("two_pass", "one_pass")
#: How a sparse feedback unit reads the output error. "parallel": each lane selects the
#: errors its entries name through a C-way multiplexer, one group of P neurons a cycle.
#: "serial": the errors are broadcast one class a cycle and each lane adds those its
#: entries name, C + 1 cycles a group and no multiplexer per lane (the multiplexers are about
#: half of a 64-lane unit's logic). The sums are exact either way: same deltas, bit for bit.
PROJECTIONS = ("parallel", "serial")
FORMAT_NAMES = ("input", "weight", "bias", "activation", "error", "feedback", "delta",
                "update", "learning_rate")

# Largest raw intermediate the golden model computes in int64 / exact float64.
_MAX_EXACT_BITS = 53


class ConfigError(ValueError):
    """An invalid configuration; ``str(err)`` is the one-line message for the user."""

    def __init__(self, field_name, value, rule):
        self.field = field_name
        self.value = value
        self.rule = rule
        super().__init__(f"{field_name}: {value!r} {rule}")


@dataclass(frozen=True)
class Formats:
    input: FixedFormat
    weight: FixedFormat
    bias: FixedFormat
    activation: FixedFormat
    error: FixedFormat
    feedback: FixedFormat
    delta: FixedFormat
    update: FixedFormat
    learning_rate: FixedFormat
    #: Width of the exact MAC accumulator; ``None`` = derived (see :meth:`EngineConfig.accumulator_bits`).
    accumulator: int | None = None


@dataclass(frozen=True)
class FeedbackConfig:
    kind: str = "sparse"          # dense | sparse
    k: int = 1                    # nonzeros per row (sparse)
    values: str = "pm1"           # pm1 | pow2 | fixed
    max_shift: int = 0            # pow2: values are +-2^-s, 0 <= s <= max_shift
    storage: str = "table"        # table | lfsr
    seed: int = 1


@dataclass(frozen=True)
class EngineConfig:
    layers: tuple                 # sizes, input first, classes last
    activation: str               # hidden activation
    methods: tuple                # per hidden layer: "dfa" | "bp"
    formats: Formats
    rounding_forward: str = "nearest"
    rounding_backward: str = "nearest"
    rounding_update: str = "nearest"
    lr_shift: tuple = ()          # per layer (hidden..., output); used when lr_multiplier is None
    lr_multiplier: float | None = None
    epochs: int = 10
    seed: int = 0
    rounding_seed: int = 7
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    softmax_table_frac_bits: int = 4
    softmax_table_size: int = 128
    lanes: int = 16
    memory: str = "auto"
    schedule: str = "one_pass"
    projection: str = "parallel"

    # ---- derived quantities -------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layers) - 1

    @property
    def n_hidden(self) -> int:
        return len(self.layers) - 2

    @property
    def n_classes(self) -> int:
        return self.layers[-1]

    @property
    def network_name(self) -> str:
        return "-".join(str(n) for n in self.layers)

    def in_format(self, layer: int) -> FixedFormat:
        """Format of the vector that layer ``layer`` (0-based) multiplies."""
        return self.formats.input if layer == 0 else self.formats.activation

    def accumulator_frac(self, layer: int) -> int:
        return self.formats.weight.frac_bits + self.in_format(layer).frac_bits

    def required_accumulator_bits(self, layer: int) -> int:
        """Bits for the exact sum of ``fan_in`` products plus the aligned bias."""
        f = self.formats
        prod = f.weight.width + self.in_format(layer).width   # any signed x (un)signed product
        bias = f.bias.width + self.accumulator_frac(layer) - f.bias.frac_bits
        terms = self.layers[layer] + 1    # n terms of p bits: the sum needs p + ceil(log2 n)
        return max(prod, bias) + math.ceil(math.log2(terms))

    def accumulator_bits(self, layer: int) -> int:
        if self.formats.accumulator is not None:
            return self.formats.accumulator
        return max(self.required_accumulator_bits(i) for i in range(self.n_layers))

    def dfa_share(self) -> float:
        return (sum(m == "dfa" for m in self.methods) / len(self.methods)) if self.methods else 0.0

    def with_(self, **changes) -> "EngineConfig":
        cfg = replace(self, **changes)
        validate(cfg)
        return cfg

    def to_dict(self) -> dict:
        d = asdict(self)
        d["formats"] = {name: str(getattr(self.formats, name)) for name in FORMAT_NAMES}
        d["formats"]["accumulator"] = self.accumulator_bits(0)
        d["layers"] = list(self.layers)
        d["methods"] = list(self.methods)
        d["lr_shift"] = list(self.lr_shift)
        return d


# ---- parsing ----------------------------------------------------------------------

_SCHEMA = {
    "network": {"layers", "activation", "methods", "method"},
    "formats": set(FORMAT_NAMES) | {"accumulator"},
    "rounding": {"forward", "backward", "update", "seed"},
    "training": {"lr_shift", "learning_rate", "epochs", "seed"},
    "feedback": {"kind", "k", "values", "max_shift", "storage", "seed"},
    "softmax": {"table_frac_bits", "table_size"},
    "hardware": {"lanes", "memory", "schedule", "projection"},
}

_DEFAULT_FORMATS = {
    "input": "u0.8", "weight": "s1.14", "bias": "s1.14", "activation": "s5.10",
    "error": "s1.14", "feedback": "s1.6", "delta": "s1.14", "update": "s1.14",
    "learning_rate": "u0.16",
}


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _int(section, key, value, lo, hi):
    name = f"{section}.{key}"
    if not _is_int(value):
        raise ConfigError(name, value, "must be an integer")
    if not lo <= value <= hi:
        raise ConfigError(name, value, f"is out of range; must be {lo} <= {key} <= {hi}")
    return value


def _choice(section, key, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{section}.{key}", value, f"must be one of {', '.join(choices)}")
    return value


def _check_schema(data, schema: dict) -> None:
    """The file is a table of known sections, each a table of known fields (a typo is an
    error that names it, never a silently ignored setting)."""
    if not isinstance(data, dict):
        raise ConfigError("(file)", type(data).__name__, "must be a table")
    for section, value in data.items():
        if section not in schema:
            raise ConfigError(section, value if not isinstance(value, dict) else "[table]",
                              f"is not a known section; known: {', '.join(schema)}")
        if not isinstance(value, dict):
            raise ConfigError(section, value, "must be a table ([" + section + "])")
        for key in value:
            if key not in schema[section]:
                raise ConfigError(f"{section}.{key}", value[key],
                                  f"is not a known field; known: {', '.join(sorted(schema[section]))}")


def _read_formats(fmt: dict) -> tuple:
    """The ``[formats]`` table: (the per-tensor formats by name, the accumulator width or
    None for "auto"), each bad entry a ConfigError naming it. Shared by the MLP, CNN and
    RNN parsers."""
    formats = {}
    for name in FORMAT_NAMES:
        text = fmt.get(name, _DEFAULT_FORMATS[name])
        try:
            formats[name] = FixedFormat.parse(text)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"formats.{name}", text, f"is not a valid format: {exc}") from None
    acc = fmt.get("accumulator", "auto")
    if acc == "auto":
        acc = None
    else:
        if not _is_int(acc):
            raise ConfigError("formats.accumulator", acc, "must be \"auto\" or an integer number of bits")
        _int("formats", "accumulator", acc, 2, 64)
    return formats, acc


def _read_rounding_no_stochastic(rnd: dict, model: str) -> dict:
    """The ``[rounding]`` table of a model without stochastic rounding (the CNN and RNN
    golden models): forward, backward and update, each trunc or nearest."""
    modes = {k: _choice("rounding", k, rnd.get(k, "nearest"), ("trunc", "nearest")) for k in ("forward", "backward")}
    upd = rnd.get("update", "nearest")
    if upd == "stochastic":
        raise ConfigError("rounding.update", upd, f"is not supported by the {model} model yet; must be trunc or nearest")
    modes["update"] = _choice("rounding", "update", upd, ("trunc", "nearest"))
    return modes


def _read_learning_rate(trn: dict, count: int, which: str, max_shift: int) -> tuple:
    """``training.learning_rate`` (a multiplier, 0 < lr < 1) or ``training.lr_shift`` (one
    integer, or ``count`` of them: lr = 2^-shift per parameter layer; ``which`` says which
    layers, in the error message): (lr_multiplier or None, lr_shift tuple or ())."""
    if "learning_rate" in trn and "lr_shift" in trn:
        raise ConfigError("training.learning_rate", trn["learning_rate"],
                          "conflicts with training.lr_shift; give one of them")
    if "learning_rate" in trn:
        lr = trn["learning_rate"]
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not (0 < lr < 1):
            raise ConfigError("training.learning_rate", lr, "must be a number with 0 < learning_rate < 1")
        return float(lr), ()
    shifts = trn.get("lr_shift", 6)
    if _is_int(shifts):
        shifts = [shifts] * count
    if not isinstance(shifts, list) or len(shifts) != count:
        raise ConfigError("training.lr_shift", shifts, f"must be an integer or a list of {count} integers{which}")
    for i, sh in enumerate(shifts):
        _int("training", f"lr_shift[{i}]", sh, 0, max_shift)
    return None, tuple(shifts)


def config_from_dict(data: dict) -> EngineConfig:
    """Build and validate a configuration from parsed TOML (missing fields take defaults)."""
    _check_schema(data, _SCHEMA)
    net = data.get("network", {})
    fmt = data.get("formats", {})
    rnd = data.get("rounding", {})
    trn = data.get("training", {})
    fbk = data.get("feedback", {})
    smx = data.get("softmax", {})
    hw = data.get("hardware", {})

    layers = net.get("layers", [784, 128, 10])
    if not isinstance(layers, list) or len(layers) < 2:
        raise ConfigError("network.layers", layers, "must be a list of at least 2 layer sizes (input ... classes)")
    for i, n in enumerate(layers):
        _int("network", f"layers[{i}]", n, 1, 65536)
    if layers[-1] < 2:
        raise ConfigError("network.layers[-1]", layers[-1], "must be at least 2 (the number of classes)")
    n_hidden = len(layers) - 2

    activation = _choice("network", "activation", net.get("activation", "hardtanh"), ACTIVATIONS)
    if "methods" in net and "method" in net:
        raise ConfigError("network.method", net["method"], "conflicts with network.methods; give one of them")
    if "methods" in net:
        methods = net["methods"]
        if not isinstance(methods, list) or len(methods) != n_hidden:
            raise ConfigError("network.methods", methods,
                              f"must be a list of {n_hidden} methods, one per hidden layer")
        for i, m in enumerate(methods):
            _choice("network", f"methods[{i}]", m, METHODS)
    else:
        methods = [_choice("network", "method", net.get("method", "dfa"), METHODS)] * n_hidden

    formats, acc = _read_formats(fmt)
    formats = Formats(accumulator=acc, **formats)

    rounding = {}
    for key in ("forward", "backward"):
        rounding[key] = _choice("rounding", key, rnd.get(key, "nearest"), ("trunc", "nearest"))
    rounding["update"] = _choice("rounding", "update", rnd.get("update", "nearest"), ROUNDING_MODES)
    rounding_seed = _int("rounding", "seed", rnd.get("seed", 7), 0, 2**32 - 1)

    n_layers = len(layers) - 1
    lr_multiplier, lr_shift = _read_learning_rate(trn, n_layers, ", one per layer", max_shift=24)
    epochs = _int("training", "epochs", trn.get("epochs", 10), 1, 100000)
    seed = _int("training", "seed", trn.get("seed", 0), 0, 2**32 - 1)

    feedback = FeedbackConfig(
        kind=_choice("feedback", "kind", fbk.get("kind", "sparse"), FEEDBACK_KINDS),
        k=_int("feedback", "k", fbk.get("k", 1), 1, layers[-1]),
        values=_choice("feedback", "values", fbk.get("values", "pm1"), FEEDBACK_VALUES),
        max_shift=_int("feedback", "max_shift", fbk.get("max_shift", 0), 0, 15),
        storage=_choice("feedback", "storage", fbk.get("storage", "table"), FEEDBACK_STORAGE),
        seed=_int("feedback", "seed", fbk.get("seed", 1), 0, 2**32 - 1),
    )
    cfg = EngineConfig(
        layers=tuple(layers), activation=activation, methods=tuple(methods), formats=formats,
        rounding_forward=rounding["forward"], rounding_backward=rounding["backward"],
        rounding_update=rounding["update"], rounding_seed=rounding_seed,
        lr_shift=lr_shift, lr_multiplier=lr_multiplier, epochs=epochs, seed=seed,
        feedback=feedback,
        softmax_table_frac_bits=_int("softmax", "table_frac_bits", smx.get("table_frac_bits", 4), 0, 8),
        softmax_table_size=_int("softmax", "table_size", smx.get("table_size", 128), 2, 4096),
        lanes=_int("hardware", "lanes", hw.get("lanes", 16), 1, 1024),
        memory=_choice("hardware", "memory", hw.get("memory", "auto"), MEMORY_KINDS),
        schedule=_choice("hardware", "schedule", hw.get("schedule", "one_pass"), SCHEDULES),
        projection=_choice("hardware", "projection", hw.get("projection", "parallel"), PROJECTIONS),
    )
    validate(cfg)
    return cfg


def validate_formats(f: Formats) -> None:
    """The format rules every engine (MLP, CNN) shares: the update keeps the weight's
    fraction bits, every datapath format is signed, the learning rate unsigned."""
    if f.update.frac_bits != f.weight.frac_bits:
        raise ConfigError("formats.update", str(f.update),
                          f"must have the weight's {f.weight.frac_bits} fraction bits (weight is {f.weight})")
    for name in ("weight", "bias", "activation", "error", "feedback", "delta", "update"):
        if not getattr(f, name).signed:
            raise ConfigError(f"formats.{name}", str(getattr(f, name)), "must be signed (s<int>.<frac>)")
    if f.learning_rate.signed:
        raise ConfigError("formats.learning_rate", str(f.learning_rate), "must be unsigned (u<int>.<frac>)")


def validate(cfg: EngineConfig) -> None:
    """Cross-field rules: the ones no single field can check by itself."""
    f = cfg.formats
    validate_formats(f)
    for layer in range(cfg.n_layers):
        acc_frac = cfg.accumulator_frac(layer)
        if f.bias.frac_bits > acc_frac:
            raise ConfigError("formats.bias", str(f.bias),
                              f"has more fraction bits than the accumulator ({acc_frac} = weight + input fraction bits)")
        if f.activation.frac_bits > acc_frac:
            raise ConfigError("formats.activation", str(f.activation),
                              f"has more fraction bits than the accumulator of layer {layer + 1} ({acc_frac})")
        need = cfg.required_accumulator_bits(layer)
        if need > _MAX_EXACT_BITS:
            raise ConfigError("formats.weight", str(f.weight),
                              f"makes layer {layer + 1}'s exact accumulator {need} bits; the limit is {_MAX_EXACT_BITS}")
        if f.accumulator is not None and f.accumulator < need:
            raise ConfigError("formats.accumulator", f.accumulator,
                              f"is too narrow: layer {layer + 1} needs {need} bits to sum {cfg.layers[layer]} products exactly")
    # The backward sums run exactly only below 2^53 (float64 in the golden model): check
    # B e (C terms) and W^T delta (n_{l+1} terms) like the forward accumulator.
    fb_bits = f.error.width + f.feedback.width + math.ceil(math.log2(cfg.n_classes + 1))
    if "dfa" in cfg.methods and fb_bits > _MAX_EXACT_BITS:
        raise ConfigError("formats.feedback", str(f.feedback),
                          f"makes the feedback sum B e {fb_bits} bits; the limit is {_MAX_EXACT_BITS}")
    for layer, method in enumerate(cfg.methods):
        bp_bits = f.weight.width + f.delta.width + math.ceil(math.log2(cfg.layers[layer + 2] + 1))
        if method == "bp" and bp_bits > _MAX_EXACT_BITS:
            raise ConfigError("formats.delta", str(f.delta),
                              f"makes layer {layer + 1}'s BP sum W^T delta {bp_bits} bits; the limit is {_MAX_EXACT_BITS}")
    if cfg.rounding_update == "stochastic":
        lr_frac = max(cfg.lr_shift) if cfg.lr_multiplier is None else f.learning_rate.frac_bits
        shift = f.delta.frac_bits + lr_frac + max(f.input.frac_bits, f.activation.frac_bits) - f.weight.frac_bits
        if shift > 32:
            raise ConfigError("rounding.update", "stochastic",
                              f"draws 32 random bits, but the update shifts by {shift} bits (at most 32)")
    lr_bits = f.learning_rate.width if cfg.lr_multiplier is not None else 1
    update_bits = f.delta.width + lr_bits + max(f.input.width, f.activation.width)
    if update_bits > 62:
        raise ConfigError("formats.delta", str(f.delta),
                          f"makes the update product delta * lr * h {update_bits} bits; the limit is 62")
    if cfg.feedback.values == "pow2" and cfg.feedback.max_shift > f.feedback.frac_bits:
        raise ConfigError("feedback.max_shift", cfg.feedback.max_shift,
                          f"exceeds the feedback format's {f.feedback.frac_bits} fraction bits ({f.feedback})")
    if cfg.feedback.values in ("pm1", "pow2") and f.feedback.int_bits < 1:
        raise ConfigError("formats.feedback", str(f.feedback),
                          "must have at least 1 integer bit to hold the feedback value 1")
    if cfg.feedback.kind == "dense" and cfg.feedback.values != "fixed":
        raise ConfigError("feedback.values", cfg.feedback.values,
                          "must be \"fixed\" for dense feedback (pm1 and pow2 are sparse value sets)")
    if cfg.feedback.kind == "dense" and cfg.feedback.storage == "lfsr":
        raise ConfigError("feedback.storage", "lfsr",
                          "regenerates sparse feedback only; dense feedback is stored (\"table\")")
    if cfg.feedback.kind == "dense" and cfg.projection == "serial":
        raise ConfigError("hardware.projection", "serial",
                          "applies to sparse feedback only (dense feedback is always read one class a cycle)")
    if cfg.feedback.k > cfg.n_classes:
        raise ConfigError("feedback.k", cfg.feedback.k,
                          f"is out of range; must be 1 <= k <= {cfg.n_classes} (the number of classes)")
    if cfg.softmax_table_size & (cfg.softmax_table_size - 1):
        raise ConfigError("softmax.table_size", cfg.softmax_table_size, "must be a power of two")
    if cfg.softmax_table_frac_bits > f.activation.frac_bits:
        raise ConfigError("softmax.table_frac_bits", cfg.softmax_table_frac_bits,
                          f"exceeds the activation format's {f.activation.frac_bits} fraction bits")
    if cfg.lr_multiplier is not None:
        raw = int(f.learning_rate.from_float(cfg.lr_multiplier))   # the golden model's quantization
        if raw < 1 or cfg.lr_multiplier > f.learning_rate.max_value + f.learning_rate.lsb / 2:
            raise ConfigError("training.learning_rate", cfg.lr_multiplier,
                              f"is not representable in formats.learning_rate {f.learning_rate}")


def load_config(path=None) -> EngineConfig:
    """Load a TOML configuration (``None``: the built-in default)."""
    return config_from_dict(_read_toml(path))


def load_engine_config(path=None):
    """Load the configuration of any generated engine: a ``[network]`` with an ``input``
    shape is a CNN (:class:`~dfa_engine.cnn_config.CNNEngineConfig`, ``docs/cnn.md``), one
    with ``hidden`` an RNN (:class:`~dfa_engine.rnn_config.RNNEngineConfig`, ``docs/rnn.md``),
    any other an MLP (:class:`EngineConfig`); ``None`` is the built-in default MLP."""
    data = _read_toml(path)
    net = data.get("network")
    if isinstance(net, dict) and "input" in net:
        from .cnn_config import cnn_config_from_dict

        return cnn_config_from_dict(data)
    if isinstance(net, dict) and "hidden" in net:
        from .rnn_config import rnn_config_from_dict

        return rnn_config_from_dict(data)
    return config_from_dict(data)


def _read_toml(path) -> dict:
    """The parsed TOML of ``path`` (``None``: the built-in default), errors as ConfigError."""
    if path is None:
        text = resources.files("dfa_engine").joinpath("configs/default.toml").read_text()
        source = "default.toml"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("(file)", str(path), "does not exist or is not a file")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError("(file)", str(path), "is not UTF-8 text") from None
        source = p.name
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"({source})", "TOML", f"does not parse: {exc}") from None
    return data


def default_config() -> EngineConfig:
    return load_config(None)
