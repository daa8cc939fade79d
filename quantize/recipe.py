"""One quantization recipe = one frozen config; every ORT option is spelled out, never defaulted."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from lenet_edge.runtime.errors import ConfigError
from lenet_edge.runtime.numeric import finite
from lenet_edge.workflow import WorkflowMapping

MODES = ("static", "dynamic")
FORMATS = ("qdq", "qoperator")
TYPES = ("u8", "s8")
CALIBRATIONS = ("minmax", "entropy", "percentile")


# a field's declared type -> (the check its value must pass, what the error says it must be)
FIELD_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: type(v) is int, "an integer"),
    "float": (finite, "a finite number"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


@dataclass(frozen=True)
class QuantRecipe:
    mode: str = "static"  # static (calibrated activations) | dynamic (activations quantized at run time)
    quant_format: str = "qdq"  # qdq | qoperator (static only)
    activation_type: str = "u8"  # u8 avoids the slow int8-activation path on x86
    weight_type: str = "s8"
    per_channel: bool = True
    reduce_range: bool = True  # 7-bit weights: no u8*s8 16-bit saturation on AVX2 (not x86 == ARM)
    calibration: str = "minmax"  # minmax | entropy | percentile (static only)
    calibration_bins: int = 2048  # histogram bins (entropy, percentile); ORT's own entropy uses 128
    percentile: float = 99.999
    symmetric_activation: bool = False
    symmetric_weight: bool = True
    # weighted layers kept in FP32, named by type and order ("Conv:0" = the first Conv), never by
    # node name; chosen by measurement (quantize.search), empty by default
    fp32_layers: tuple[str, ...] = ()
    # the fp32_layers keep int8 weights (weight-only quantization: symmetric, per output channel,
    # one DequantizeLinear each, which the ORT target turns into a Cast*scale that onnxruntime folds
    # when it loads the model): FP32 compute at INT8 size
    weight_only: bool = False

    def __post_init__(self) -> None:
        import re

        # a recipe comes from TOML, JSON or flags: each field of its declared type ("yes" is no bool)
        for f in fields(self):
            v = getattr(self, f.name)
            ok, want = FIELD_TYPES.get(str(f.type), (lambda v: isinstance(v, list | tuple), "a list"))
            if not ok(v):
                raise ConfigError(f"{f.name} must be {want}, got {v!r:.60}")
        object.__setattr__(self, "fp32_layers", tuple(self.fp32_layers))
        for layer in self.fp32_layers:
            if not isinstance(layer, str) or not re.fullmatch(r"[A-Za-z]{1,32}:\d{1,4}", layer):
                raise ConfigError(f"fp32_layers entries look like 'Conv:0', got {layer!r}")
        if self.weight_only and not self.fp32_layers:
            raise ConfigError("weight_only applies to fp32_layers; name the layers (e.g. Gemm:1,Gemm:2)")
        checks = [
            ("mode", MODES),
            ("quant_format", FORMATS),
            ("activation_type", TYPES),
            ("weight_type", TYPES),
            ("calibration", CALIBRATIONS),
        ]
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 16 <= self.calibration_bins <= 1 << 16:
            raise ConfigError(f"calibration_bins must be 16..65536, got {self.calibration_bins}")
        if not 90.0 <= self.percentile <= 100.0:
            raise ConfigError(f"percentile must be 90..100, got {self.percentile}")
        if self.mode == "dynamic" and (self.quant_format != "qoperator" or self.activation_type != "u8"):
            # ORT's dynamic quantization emits QOperator-style ops with uint8 activations only.
            raise ConfigError("dynamic mode implies quant_format='qoperator' and activation_type='u8'")

    @property
    def name(self) -> str:
        """Short, unique label: static-qdq-u8s8-pc-rr-minmax."""
        parts = [self.mode]
        if self.mode == "static":
            parts.append(self.quant_format)
        parts.append(f"{self.activation_type}{self.weight_type}")
        parts.append("pc" if self.per_channel else "pt")
        if self.reduce_range:
            parts.append("rr")
        if self.mode == "static":
            cal = self.calibration
            if cal == "entropy":
                cal += str(self.calibration_bins)
            elif cal == "percentile":
                cal += f"{self.percentile:g}"
            parts.append(cal)
            if self.symmetric_activation:
                parts.append("symact")
        if not self.symmetric_weight:
            parts.append("asymw")
        if self.fp32_layers:
            parts.append("fp32_" + "+".join(x.replace(":", "") for x in self.fp32_layers))
            if self.weight_only:
                parts.append("w8")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.fp32_layers:
            d["fp32_layers"] = list(self.fp32_layers)  # as JSON holds it, so records compare equal
        else:
            del d["fp32_layers"]  # all-INT8 recipes keep the record format they always had
        if not self.weight_only:
            del d["weight_only"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantRecipe:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown recipe fields: {sorted(unknown)}")
        return cls(**d)


# The recipe a device user should take, per model, chosen from the sweep (results/quantize_sweep.md):
# among u8-activation/s8-weight/reduce-range recipes (no slow int8-activation path on x86; 7-bit
# weights make x86 and ARM results identical), QDQ per-channel MinMax has the best or equal
# agreement with FP32 for both models (99.94 % / 99.95 %, top-1 drop +0.01 / +0.02 pp). QDQ keeps
# per-layer SQNR diagnosis (qdq_loss_debug) and gives the same predictions as QOperator, which is
# only ~5 % smaller; per-tensor scales save ~3 KB but agree less on lenet_pool (99.90 %).
# Entropy at 2048 bins clips too hard here (-0.20 / -0.13 pp); at 128 bins it equals MinMax.


def _recipe_of(wf: Any) -> QuantRecipe:
    return QuantRecipe.from_dict(wf.quantize_recipe)


# Model name -> its workflow's [quantize] recipe (an empty table = QuantRecipe()).
DEFAULT_RECIPES: Mapping[str, QuantRecipe] = WorkflowMapping(_recipe_of)
