"""The configuration of a fixed-point CNN engine (``docs/numerics.md`` section 12).

A TOML file, parsed as data only, like the MLP's (:mod:`dfa_engine.config`): the same
``[formats]``, ``[rounding]``, ``[training]`` and ``[softmax]`` sections, and a
``[network]`` section whose ``layers`` is a list of tables::

    [network]
    input = [1, 28, 28]            # channels, height, width
    activation = "hardtanh"
    layers = [
      { type = "conv", channels = 8, kernel = 3, stride = 1, padding = 1, groups = 1, method = "dfa" },
      { type = "maxpool", size = 2 },
      { type = "conv", channels = 16, method = "bp" },
      { type = "maxpool", size = 2 },
      { type = "flatten" },
      { type = "dense", features = 10 },   # the output layer: no method, no activation
    ]

    [feedback]                     # the sparse dilated feedback of the DFA layers
    d = 2
    k = 1
    groups = 2
    values = "pm1"

Every invalid field raises :class:`~dfa_engine.config.ConfigError` with the field, the
value and the rule, e.g. ``network.layers[2].groups: 3 is out of range; must divide
the 8 input channels and the 16 output channels``.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import (_read_formats, _read_learning_rate, _read_rounding_no_stochastic, ACTIVATIONS, FORMAT_NAMES, METHODS, ConfigError, Formats, _choice, _int,
                     _check_schema, validate_formats)
from .fixed import FixedFormat

__all__ = ["CNNLayer", "DilatedFeedbackConfig", "CNNEngineConfig", "cnn_config_from_dict", "load_cnn_config",
           "LAYER_TYPES"]

LAYER_TYPES = ("conv", "maxpool", "avgpool", "flatten", "dense")
FEEDBACK_VALUES = ("pm1", "pow2")
_LAYER_KEYS = {
    "conv": {"type", "channels", "kernel", "stride", "padding", "groups", "method"},
    "maxpool": {"type", "size"},
    "avgpool": {"type", "size"},
    "flatten": {"type"},
    "dense": {"type", "features", "method"},
}
_SCHEMA = {
    "network": {"input", "activation", "layers", "method"},
    "formats": set(FORMAT_NAMES) | {"accumulator"},
    "rounding": {"forward", "backward", "update"},
    "training": {"lr_shift", "learning_rate", "epochs", "seed"},
    "feedback": {"d", "k", "groups", "values", "max_shift", "storage", "seed"},
    "softmax": {"table_frac_bits", "table_size"},
}
# Largest exact sum the golden model forms in float64 BLAS, and largest int64 product.
_MAX_EXACT_BITS = 53
_MAX_PRODUCT_BITS = 62


@dataclass(frozen=True)
class CNNLayer:
    """One layer. ``channels``: conv output channels or dense features; ``size``: pool window
    (= stride); ``method``: ``"dfa"``/``"bp"`` for conv and hidden dense layers, ``None`` for
    pools, flatten and the output layer."""

    type: str
    channels: int = 0
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    size: int = 1
    method: str | None = None

    @property
    def parametrized(self) -> bool:
        return self.type in ("conv", "dense")


@dataclass(frozen=True)
class DilatedFeedbackConfig:
    """The sparse dilated feedback (``docs/cnn.md``): lattice dilation ``d``, ``k`` taps per
    table row, ``groups`` channel/class groups, values ``pm1`` or ``pow2`` (``+-2^-s``,
    ``s <= max_shift``), drawn from LFSR stream ``seed_state(seed, l)`` of layer ``l``
    (0-based parametrized-layer index)."""

    d: int = 2
    k: int = 1
    groups: int = 1
    values: str = "pm1"
    max_shift: int = 0
    storage: str = "table"
    seed: int = 1


@dataclass(frozen=True)
class CNNEngineConfig:
    input_shape: tuple            # (channels, height, width)
    layers: tuple                 # of CNNLayer, the last one the dense output layer
    activation: str
    formats: Formats
    rounding_forward: str = "nearest"
    rounding_backward: str = "nearest"
    rounding_update: str = "nearest"
    lr_shift: tuple = ()          # per parametrized layer (output last); used when lr_multiplier is None
    lr_multiplier: float | None = None
    epochs: int = 10
    seed: int = 0
    feedback: DilatedFeedbackConfig = field(default_factory=DilatedFeedbackConfig)
    softmax_table_frac_bits: int = 4
    softmax_table_size: int = 128

    # ---- derived ---------------------------------------------------------------------
    @property
    def shapes(self) -> list:
        """Output shape of every layer (``(C, H, W)`` or ``(n,)``), input first."""
        out = [tuple(self.input_shape)]
        for spec in self.layers:
            out.append(_out_shape(spec, out[-1]))
        return out

    @property
    def param_layers(self) -> list:
        """Indices into :attr:`layers` of the conv and dense layers (``l = 0 .. L-1``)."""
        return [i for i, s in enumerate(self.layers) if s.parametrized]

    @property
    def n_layers(self) -> int:
        return len(self.param_layers)

    @property
    def n_classes(self) -> int:
        return self.layers[-1].channels

    @property
    def methods(self) -> tuple:
        """Per non-output parametrized layer: ``"dfa"`` or ``"bp"``."""
        return tuple(self.layers[i].method for i in self.param_layers[:-1])

    def in_format(self, l: int) -> FixedFormat:
        """Format of the tensor parametrized layer ``l`` (0-based) reads."""
        return self.formats.input if l == 0 else self.formats.activation

    def accumulator_frac(self, l: int) -> int:
        return self.formats.weight.frac_bits + self.in_format(l).frac_bits

    def fan_in(self, l: int) -> int:
        i = self.param_layers[l]
        spec, shp = self.layers[i], self.shapes[i]
        if spec.type == "conv":
            return shp[0] // spec.groups * spec.kernel * spec.kernel
        return math.prod(shp)

    def required_accumulator_bits(self, l: int) -> int:
        f = self.formats
        prod = f.weight.width + self.in_format(l).width
        bias = f.bias.width + self.accumulator_frac(l) - f.bias.frac_bits
        return max(prod, bias) + math.ceil(math.log2(self.fan_in(l) + 1))

    def accumulator_bits(self, l: int = 0) -> int:
        if self.formats.accumulator is not None:
            return self.formats.accumulator
        return max(self.required_accumulator_bits(i) for i in range(self.n_layers))

    def lr(self, layer: int):
        """``(lr_raw, F_lr)`` of parametrized layer ``layer`` (0-based), section 6: the shift
        ``lr_shift[layer]``, or the one multiplier in the learning-rate format."""
        if self.lr_multiplier is None:
            return 1, self.lr_shift[layer]
        f = self.formats.learning_rate
        return int(f.from_float(self.lr_multiplier)), f.frac_bits

    @property
    def network_name(self) -> str:
        """The network as a spec string, e.g. ``conv4-mp2-conv4g2-ap2-fc10`` (``docs/cnn.md``)."""
        parts = []
        for s in self.layers:
            if s.type == "conv":
                extra = "".join(f"{k}{v}" for k, v, d in (("k", s.kernel, 3), ("s", s.stride, 1),
                                                           ("p", s.padding, s.kernel // 2), ("g", s.groups, 1)) if v != d)
                parts.append(f"conv{s.channels}{extra}")
            elif s.type == "dense":
                parts.append(f"fc{s.channels}")
            elif s.type in ("maxpool", "avgpool"):
                parts.append(f"{s.type[0]}p{s.size}")
        return "-".join(parts)

    @property
    def lanes(self) -> int:
        """Multiply-accumulate lanes of the generated CNN engine (``hdl/cnn_engine.py``): one."""
        return 1

    def with_(self, **changes) -> "CNNEngineConfig":
        cfg = replace(self, **changes)
        validate_cnn(cfg)
        return cfg

    def to_dict(self) -> dict:
        return {
            "input": list(self.input_shape), "activation": self.activation,
            "layers": [{k: v for k, v in vars(s).items() if v is not None} for s in self.layers],
            "formats": {**{n: str(getattr(self.formats, n)) for n in FORMAT_NAMES},
                        "accumulator": self.accumulator_bits()},
            "rounding": {"forward": self.rounding_forward, "backward": self.rounding_backward,
                         "update": self.rounding_update},
            "training": {"lr_shift": list(self.lr_shift), "learning_rate": self.lr_multiplier,
                         "epochs": self.epochs, "seed": self.seed},
            "feedback": vars(self.feedback).copy(),
            "softmax": {"table_frac_bits": self.softmax_table_frac_bits, "table_size": self.softmax_table_size},
        }


def _out_shape(spec: CNNLayer, shp: tuple) -> tuple:
    if spec.type == "conv":
        _, h, w = shp
        ho = (h + 2 * spec.padding - spec.kernel) // spec.stride + 1
        wo = (w + 2 * spec.padding - spec.kernel) // spec.stride + 1
        return (spec.channels, ho, wo)
    if spec.type in ("maxpool", "avgpool"):
        return (shp[0], shp[1] // spec.size, shp[2] // spec.size)
    if spec.type == "flatten":
        return (math.prod(shp),)
    return (spec.channels,)


# ---- parsing ---------------------------------------------------------------------------

def _layer(i: int, entry, shp: tuple, default_method: str, is_last: bool) -> CNNLayer:
    name = f"network.layers[{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(name, entry, "must be a table such as { type = \"conv\", channels = 8 }")
    kind = entry.get("type")
    if not isinstance(kind, str) or kind not in LAYER_TYPES:
        raise ConfigError(f"{name}.type", kind, f"must be one of {', '.join(LAYER_TYPES)}")
    for key in entry:
        if key not in _LAYER_KEYS[kind]:
            raise ConfigError(f"{name}.{key}", entry[key],
                              f"is not a field of a {kind} layer; known: {', '.join(sorted(_LAYER_KEYS[kind]))}")
    spatial = len(shp) == 3
    if kind in ("conv", "maxpool", "avgpool", "flatten") and not spatial:
        raise ConfigError(f"{name}.type", kind, f"needs a channels x height x width input, not a vector of {shp[0]}")
    if kind == "dense" and spatial:
        raise ConfigError(f"{name}.type", kind,
                          f"follows a {shp[0]}x{shp[1]}x{shp[2]} feature map; insert {{ type = \"flatten\" }} first")
    if is_last and kind != "dense":
        raise ConfigError(f"{name}.type", kind, "must be \"dense\": the last layer is the output layer")
    method = None
    if kind in ("conv", "dense"):
        if is_last:
            if "method" in entry:
                raise ConfigError(f"{name}.method", entry["method"],
                                  "is not allowed on the output layer (it always gets its true gradient)")
        else:
            method = _choice(name, "method", entry.get("method", default_method), METHODS)
    if kind == "conv":
        cin, h, w = shp
        ch = _int(name, "channels", entry.get("channels"), 1, 4096)
        k = _int(name, "kernel", entry.get("kernel", 3), 1, 15)
        s = _int(name, "stride", entry.get("stride", 1), 1, 15)
        p = _int(name, "padding", entry.get("padding", k // 2), 0, k - 1)
        g = _int(name, "groups", entry.get("groups", 1), 1, 4096)
        if cin % g or ch % g:
            raise ConfigError(f"{name}.groups", g,
                              f"is out of range; must divide the {cin} input channels and the {ch} output channels")
        if k > min(h, w) + 2 * p:
            raise ConfigError(f"{name}.kernel", k, f"is out of range; must be <= the padded input {h + 2 * p}x{w + 2 * p}")
        return CNNLayer("conv", ch, k, s, p, g, method=method)
    if kind in ("maxpool", "avgpool"):
        hi = min(shp[1], shp[2])
        size = _int(name, "size", entry.get("size", 2), 1, max(hi, 1))
        if kind == "avgpool" and size & (size - 1):
            raise ConfigError(f"{name}.size", size, "must be a power of two (the average is a shift)")
        return CNNLayer(kind, size=size)
    if kind == "flatten":
        return CNNLayer("flatten")
    n = _int(name, "features", entry.get("features"), 1, 65536)
    return CNNLayer("dense", n, method=method)


def cnn_config_from_dict(data: dict) -> CNNEngineConfig:
    """Build and validate a CNN configuration from parsed TOML (missing fields take defaults)."""
    _check_schema(data, _SCHEMA)
    net, fmt, rnd = data.get("network", {}), data.get("formats", {}), data.get("rounding", {})
    trn, fbk, smx = data.get("training", {}), data.get("feedback", {}), data.get("softmax", {})

    shp = net.get("input", [1, 28, 28])
    if not isinstance(shp, list) or len(shp) != 3:
        raise ConfigError("network.input", shp, "must be a list [channels, height, width]")
    for i, n in enumerate(shp):
        _int("network", f"input[{i}]", n, 1, 4096)
    activation = _choice("network", "activation", net.get("activation", "hardtanh"), ACTIVATIONS)
    default_method = _choice("network", "method", net.get("method", "dfa"), METHODS)
    entries = net.get("layers")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("network.layers", entries, "must be a non-empty list of layer tables")
    layers, cur, in_block = [], tuple(shp), False
    for i, entry in enumerate(entries):
        spec = _layer(i, entry, cur, default_method, i == len(entries) - 1)
        if spec.type in ("maxpool", "avgpool") and not in_block:
            raise ConfigError(f"network.layers[{i}].type", spec.type,
                              "must follow a conv layer (a pooling layer belongs to the conv layer before it)")
        in_block = spec.type == "conv" or (in_block and spec.type in ("maxpool", "avgpool"))
        cur = _out_shape(spec, cur)
        if min(cur) < 1:
            raise ConfigError(f"network.layers[{i}]", entry, f"leaves an empty output {cur}")
        layers.append(spec)
    if layers[-1].channels < 2:
        raise ConfigError(f"network.layers[{len(layers) - 1}].features", layers[-1].channels,
                          "must be at least 2 (the number of classes)")
    n_param = sum(s.parametrized for s in layers)

    formats, acc = _read_formats(fmt)

    modes = _read_rounding_no_stochastic(rnd, "CNN")

    lr_multiplier, lr_shift = _read_learning_rate(trn, n_param, ", one per conv/dense layer", max_shift=30)

    feedback = DilatedFeedbackConfig(
        d=_int("feedback", "d", fbk.get("d", 2), 1, 64),
        k=_int("feedback", "k", fbk.get("k", 1), 1, layers[-1].channels),
        groups=_int("feedback", "groups", fbk.get("groups", 1), 1, layers[-1].channels),
        values=_choice("feedback", "values", fbk.get("values", "pm1"), FEEDBACK_VALUES),
        max_shift=_int("feedback", "max_shift", fbk.get("max_shift", 0), 0, 15),
        storage=_choice("feedback", "storage", fbk.get("storage", "table"), ("table", "lfsr")),
        seed=_int("feedback", "seed", fbk.get("seed", 1), 0, 2**32 - 1),
    )
    cfg = CNNEngineConfig(
        input_shape=tuple(shp), layers=tuple(layers), activation=activation,
        formats=Formats(accumulator=acc, **formats),
        rounding_forward=modes["forward"], rounding_backward=modes["backward"], rounding_update=modes["update"],
        lr_shift=lr_shift, lr_multiplier=lr_multiplier,
        epochs=_int("training", "epochs", trn.get("epochs", 10), 1, 100000),
        seed=_int("training", "seed", trn.get("seed", 0), 0, 2**32 - 1),
        feedback=feedback,
        softmax_table_frac_bits=_int("softmax", "table_frac_bits", smx.get("table_frac_bits", 4), 0, 8),
        softmax_table_size=_int("softmax", "table_size", smx.get("table_size", 128), 2, 4096),
    )
    validate_cnn(cfg)
    return cfg


def validate_cnn(cfg: CNNEngineConfig) -> None:
    """Cross-field rules (formats against the network, exactness bounds, feedback groups)."""
    f = cfg.formats
    validate_formats(f)
    shapes = cfg.shapes
    lr_bits = f.learning_rate.width if cfg.lr_multiplier is not None else 1
    for l, i in enumerate(cfg.param_layers):
        spec, name = cfg.layers[i], f"network.layers[{i}]"
        acc_frac = cfg.accumulator_frac(l)
        if f.bias.frac_bits > acc_frac:
            raise ConfigError("formats.bias", str(f.bias),
                              f"has more fraction bits than the accumulator of {name} ({acc_frac})")
        if f.activation.frac_bits > acc_frac:
            raise ConfigError("formats.activation", str(f.activation),
                              f"has more fraction bits than the accumulator of {name} ({acc_frac})")
        need = cfg.required_accumulator_bits(l)
        if need > _MAX_EXACT_BITS:
            raise ConfigError("formats.weight", str(f.weight),
                              f"makes the exact accumulator of {name} {need} bits; the limit is {_MAX_EXACT_BITS}")
        if f.accumulator is not None and f.accumulator < need:
            raise ConfigError("formats.accumulator", f.accumulator,
                              f"is too narrow: {name} needs {need} bits to sum {cfg.fan_in(l)} products exactly")
        # dW: the exact sum over the output positions, then times the learning rate
        positions = math.prod(shapes[i + 1][1:]) if spec.type == "conv" else 1
        upd = f.delta.width + cfg.in_format(l).width + math.ceil(math.log2(positions))
        if upd > _MAX_EXACT_BITS or upd + lr_bits > _MAX_PRODUCT_BITS:
            raise ConfigError("formats.delta", str(f.delta),
                              f"makes the weight-gradient sum of {name} {upd} bits (+{lr_bits} learning-rate bits); "
                              f"the limits are {_MAX_EXACT_BITS} and {_MAX_PRODUCT_BITS}")
        # BP below this layer: its transposed sum
        if l > 0 and cfg.layers[cfg.param_layers[l - 1]].method == "bp":
            terms = (spec.channels // spec.groups) * spec.kernel * spec.kernel if spec.type == "conv" else spec.channels
            bp = f.weight.width + f.delta.width + math.ceil(math.log2(terms + 1))
            if bp > _MAX_EXACT_BITS:
                raise ConfigError("formats.delta", str(f.delta),
                                  f"makes the BP sum through {name} {bp} bits; the limit is {_MAX_EXACT_BITS}")
    fb = cfg.feedback
    for l, i in enumerate(cfg.param_layers[:-1]):
        if cfg.layers[i].method != "dfa":
            continue
        ch, C = cfg.layers[i].channels, cfg.n_classes
        if ch % fb.groups or fb.groups > C:
            raise ConfigError("feedback.groups", fb.groups,
                              f"is out of range; must divide the {ch} channels of network.layers[{i}] and be <= {C}")
        cg = C // fb.groups
        if fb.k > cg:
            raise ConfigError("feedback.k", fb.k, f"is out of range; must be <= {cg}, the classes of a group")
    if fb.values == "pow2" and fb.max_shift > f.feedback.frac_bits:
        raise ConfigError("feedback.max_shift", fb.max_shift,
                          f"exceeds the feedback format's {f.feedback.frac_bits} fraction bits ({f.feedback})")
    if f.feedback.int_bits < 1:
        raise ConfigError("formats.feedback", str(f.feedback),
                          "must have at least 1 integer bit to hold the feedback value 1")
    fb_bits = f.error.width + f.feedback.width + math.ceil(math.log2(fb.k + 1))
    if fb_bits > _MAX_EXACT_BITS:
        raise ConfigError("formats.feedback", str(f.feedback),
                          f"makes the feedback sum {fb_bits} bits; the limit is {_MAX_EXACT_BITS}")
    if cfg.softmax_table_size & (cfg.softmax_table_size - 1):
        raise ConfigError("softmax.table_size", cfg.softmax_table_size, "must be a power of two")
    if cfg.softmax_table_frac_bits > f.activation.frac_bits:
        raise ConfigError("softmax.table_frac_bits", cfg.softmax_table_frac_bits,
                          f"exceeds the activation format's {f.activation.frac_bits} fraction bits")
    if cfg.lr_multiplier is not None:
        raw = int(f.learning_rate.from_float(cfg.lr_multiplier))
        if raw < 1 or cfg.lr_multiplier > f.learning_rate.max_value + f.learning_rate.lsb / 2:
            raise ConfigError("training.learning_rate", cfg.lr_multiplier,
                              f"is not representable in formats.learning_rate {f.learning_rate}")


def load_cnn_config(path) -> CNNEngineConfig:
    """Load a CNN configuration TOML."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("(file)", str(path), "does not exist or is not a file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("(file)", str(path), "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"({p.name})", "TOML", f"does not parse: {exc}") from None
    return cnn_config_from_dict(data)
