"""The models lenet-edge serves: one declarative workflow file each (workflows/<name>.toml).

A workflow names the model source, its input contract, its data set, its training recipe, its
quantization recipe, the published figure it reproduces and, for the study, the model it is
compared with. The code names no model: the list of models is the list of workflow files, and a
stage reads what it needs from them. Every file is validated before any stage uses it; a problem is
one line naming the file, the key and what is wrong (WorkflowError, exit 2).

Standard library only (tomllib): `--help` and the checks need no framework.
"""

from __future__ import annotations

import ast
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from lenet_edge.runtime.errors import ConfigError, LenetEdgeError
from lenet_edge.runtime.files import inside, missing_file
from lenet_edge.runtime.numeric import finite  # TOML reads nan and inf as floats

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_DIR = ROOT / "workflows"
# a Paddle model class + a checkpoint (trained here), a Paddle inference model (inference.json or
# .pdmodel + .pdiparams, from paddle.jit.save), or an ONNX file; the last two take normalised
# float [N,C,H,W] and are exported with the normalisation put in front
SOURCES = ("paddle", "paddle-inference", "onnx")
# MNIST's four IDX files; one .npz with {train,test}_{images,labels}; or a folder of images + a
# labels CSV (converted once to a .npz: lenet_edge/image_folder.py)
DATA_FORMATS = ("idx", "npz", "images")
TOLERANCES = ROOT / "results" / "tolerances.json"


class WorkflowError(ConfigError):
    """A workflow file that cannot be used: one line naming the file, the key and the problem."""


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int, ...]  # C, H, W of one image
    layout: str
    dtype: str
    pixel_range: tuple[float, float]
    normalize_mean: float
    normalize_std: float


@dataclass(frozen=True)
class TrainSpec:
    epochs: int
    batch: int
    lr: float
    optimizer: str


@dataclass(frozen=True)
class Workflow:
    path: Path
    name: str
    label: str
    source: str
    model_class: str | None  # "package.module:Class" (source "paddle")
    checkpoint: Path | None  # source "paddle"
    model_file: Path | None  # source "onnx"
    params: int
    color: str
    input: InputSpec
    data_format: str
    data_dir: Path | None
    classes: int
    train: TrainSpec | None  # what `lenet-edge train` does (a Paddle source only)
    data_path: Path | None = None  # format "npz"
    labels_file: Path | None = None  # format "images"
    calibration_size: int | None = None  # a .npz / image-folder set's calibration sample
    calibration_seed: int | None = None
    quantize_recipe: dict[str, Any] = field(default_factory=dict)
    tolerances: dict[str, Any] = field(default_factory=dict)  # overrides of results/tolerances.json
    published_top1: float | None = None
    published_source: str = ""
    baseline: str | None = None  # the study compares this model with `baseline`


# The schema: section -> key -> (type, required). Unknown sections and keys are errors (typos).
_SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    "model": {
        "name": (str, True),
        "label": (str, True),
        "source": (str, True),
        "class": (str, False),
        "checkpoint": (str, False),
        "file": (str, False),
        "params": (int, True),
        "color": (str, False),
    },
    "input": {
        "shape": (list, True),
        "layout": (str, True),
        "dtype": (str, True),
        "pixel_range": (list, True),
        "normalize": (dict, True),
    },
    "data": {
        "format": (str, True),
        "dir": (str, False),
        "path": (str, False),
        "labels": (str, False),
        "classes": (int, True),
        "calibration_size": (int, False),
        "calibration_seed": (int, False),
    },
    "train": {"epochs": (int, True), "batch": (int, True), "lr": (float, True), "optimizer": (str, True)},
    "quantize": {"recipe": (dict, False)},
    "reference": {"published_top1": (float, False), "source": (str, False)},
    "study": {"baseline": (str, False)},
    "tolerances": {},  # any key of results/tolerances.json: { value = ..., why = "..." }
}
_REQUIRED_SECTIONS = ("model", "input", "data")  # [train]: for source "paddle"


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {list: "an array", dict: "a table", str: "a string", int: "an integer", float: "a number"}
    return names.get(t, str(t))


def _check_types(path: Path, doc: dict[str, Any]) -> None:
    for section in doc:
        if section not in _SCHEMA:
            raise WorkflowError(f"{path}: unknown section [{section}]; expected one of {sorted(_SCHEMA)}")
        if not isinstance(doc[section], dict):
            raise WorkflowError(f"{path}: [{section}] must be a table")
    for section in _REQUIRED_SECTIONS:
        if section not in doc:
            raise WorkflowError(f"{path}: missing section [{section}]")
    for section, keys in _SCHEMA.items():
        if section not in doc:
            continue  # an optional section left out (the required ones are checked above)
        table = doc[section]
        for key in table:
            if keys and key not in keys:
                raise WorkflowError(
                    f"{path}: [{section}] unknown key {key!r}; expected one of {sorted(keys)}"
                )
        for key, (typ, required) in keys.items():
            if key not in table:
                if required:
                    raise WorkflowError(f"{path}: [{section}] missing key {key!r}")
                continue
            value = table[key]
            ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
            if typ is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True  # 1 is a fine learning rate
            if not ok:
                raise WorkflowError(
                    f"{path}: [{section}] {key} must be {_type_name(typ)}, got {type(value).__name__} {value!r}"
                )
            if typ is float and not math.isfinite(value):
                raise WorkflowError(f"{path}: [{section}] {key} must be finite, got {value!r}")


def _positive(path: Path, where: str, value: float) -> None:
    if not value > 0:
        raise WorkflowError(f"{path}: {where} must be > 0, got {value!r}")


def _class_defined(path: Path, spec: str) -> None:
    """`package.module:Class` names a class defined in one of our modules (checked by reading the
    source, so no framework is imported)."""
    module, sep, cls = spec.partition(":")
    if not sep or not module or not cls.isidentifier():
        raise WorkflowError(f"{path}: [model] class must look like 'package.module:Class', got {spec!r}")
    parts = module.removeprefix("lenet_edge.").split(".")
    candidates = [ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts) / "__init__.py"]
    src = next((c for c in candidates if c.is_file()), None)
    if not module.startswith("lenet_edge.") or src is None:
        raise WorkflowError(f"{path}: [model] class {spec!r}: no module {module!r} in lenet-edge")
    tree = ast.parse(src.read_text())
    if not any(isinstance(n, ast.ClassDef) and n.name == cls for n in tree.body):
        raise WorkflowError(f"{path}: [model] class {spec!r}: {module} defines no class {cls!r}")


def path_base(path: Path) -> Path:
    """Where a workflow's relative paths start: the repository for a shipped workflow, the
    workflow's own folder for any other."""
    return ROOT if path.resolve().parent == WORKFLOW_DIR.resolve() else path.resolve().parent


def _inside(path: Path, where: str, rel: str) -> Path:
    """A path from a workflow: relative, and staying inside its base folder."""
    p, base = Path(rel), path_base(path)
    what = "the repository" if base == ROOT else f"the workflow's folder {base}"
    if not rel or p.is_absolute() or ".." in p.parts:
        raise WorkflowError(f"{path}: {where} {rel!r} must be a relative path inside {what}")
    try:  # a symlink on the way may not lead out either
        inside(base, base / p)
    except LenetEdgeError:
        raise WorkflowError(f"{path}: {where} {rel!r} leads outside {what} (through a symlink)") from None
    return base / p


def _tolerances(path: Path, table: dict[str, Any]) -> dict[str, Any]:
    """[tolerances] overrides: each a known tolerance, its value of the same type, with a reason."""
    import json

    known = json.loads(TOLERANCES.read_text())
    out = {}
    for key, entry in table.items():
        if key not in known or key == "about":
            raise WorkflowError(f"{path}: [tolerances] unknown tolerance {key!r}; see {TOLERANCES.name}")
        if not isinstance(entry, dict) or set(entry) != {"value", "why"} or not isinstance(entry["why"], str):
            raise WorkflowError(f'{path}: [tolerances] {key} must be {{ value = ..., why = "..." }}')
        want, got = known[key]["value"], entry["value"]
        same = (
            isinstance(got, bool)
            if isinstance(want, bool)
            else isinstance(got, int | float) and not isinstance(got, bool)
        )
        if not same or (not isinstance(got, bool) and not math.isfinite(got)):
            raise WorkflowError(
                f"{path}: [tolerances] {key} value must be a finite {type(want).__name__}, got {got!r}"
            )
        # limits are sizes, shares and probabilities: -5 turned a check into one nothing passes
        if not isinstance(got, bool) and not (0 <= got <= (1 if key.endswith("_min") else math.inf)):
            top = "1" if key.endswith("_min") else "any finite number"
            raise WorkflowError(f"{path}: [tolerances] {key} value must be 0..{top}, got {got!r}")
        out[key] = got
    return out


def parse_workflow(path: Path) -> Workflow:
    path = Path(path)
    fifo = path.exists() and not path.is_dir() and missing_file(path, "workflow file")
    if fifo:  # reading a FIFO waited forever
        raise WorkflowError(f"{path}: {fifo}")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkflowError(f"{path}: workflow file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise WorkflowError(f"{path}: cannot read the workflow ({type(e).__name__})") from None
    except tomllib.TOMLDecodeError as e:
        raise WorkflowError(f"{path}: not valid TOML ({e})") from None
    _check_types(path, doc)
    m, i, d = doc["model"], doc["input"], doc["data"]
    if m["name"] != path.stem:
        raise WorkflowError(f"{path}: [model] name {m['name']!r} must equal the file name ({path.stem!r})")
    if not m["name"].replace("_", "").isalnum():
        raise WorkflowError(f"{path}: [model] name {m['name']!r}: letters, digits and _ only")
    if m["source"] not in SOURCES:
        raise WorkflowError(
            f"{path}: [model] source {m['source']!r} is not supported; expected one of {SOURCES}"
        )
    need = {"paddle": ("class", "checkpoint"), "paddle-inference": ("file",), "onnx": ("file",)}[m["source"]]
    for key in need:
        if key not in m:
            raise WorkflowError(f"{path}: [model] missing key {key!r} (source {m['source']!r})")
    for key in {"class", "checkpoint", "file"} - set(need):
        if key in m:
            raise WorkflowError(f"{path}: [model] {key!r} does not apply to source {m['source']!r}")
    if m["source"] == "paddle":
        _class_defined(path, m["class"])
    checkpoint = _inside(path, "[model] checkpoint", m["checkpoint"]) if "checkpoint" in m else None
    model_file = _inside(path, "[model] file", m["file"]) if "file" in m else None
    _positive(path, "[model] params", m["params"])

    label = m["label"]
    if not label.strip() or len(label) > 60 or re.search(r"[|`<>\x00-\x1f\x7f-\x9f\u2028\u2029]", label):
        raise WorkflowError(  # it heads report tables and plot legends
            f"{path}: [model] label must be 1..60 characters without |, `, <, > or control characters"
        )
    if "color" in m and not re.fullmatch(r"#(?:[0-9a-fA-F]{3}){1,2}", m["color"]):
        raise WorkflowError(  # 'notacolor' failed in `make report`, blamed on the result files
            f"{path}: [model] color {m['color']!r:.40} must be a hex colour like '#1f77b4'"
        )
    shape = i["shape"]
    if len(shape) != 3 or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in shape):
        raise WorkflowError(f"{path}: [input] shape must be three positive integers [C, H, W], got {shape!r}")
    if shape[0] > 64 or max(shape[1:]) > 4096:
        raise WorkflowError(f"{path}: [input] shape {shape!r}: at most 64 channels and 4096 pixels a side")
    if i["layout"] != "NCHW":
        raise WorkflowError(f"{path}: [input] layout {i['layout']!r} is not supported; expected 'NCHW'")
    if i["dtype"] != "uint8":
        raise WorkflowError(f"{path}: [input] dtype {i['dtype']!r} is not supported; expected 'uint8' pixels")
    pr = i["pixel_range"]
    if len(pr) != 2 or not all(finite(x) for x in pr) or not pr[0] < pr[1]:
        raise WorkflowError(f"{path}: [input] pixel_range must be [low, high] with low < high, got {pr!r}")
    norm = i["normalize"]
    if set(norm) != {"mean", "std"} or not all(finite(v) for v in norm.values()):
        raise WorkflowError(
            f"{path}: [input] normalize must be {{ mean = number, std = number }} (finite), got {norm!r}"
        )
    _positive(path, "[input] normalize.std", norm["std"])
    if not max(abs(x - norm["mean"]) for x in pr) / norm["std"] <= 1e6:
        raise WorkflowError(  # std 1e-320: 1/std is infinite, every input NaN or inf
            f"{path}: [input] normalize {norm!r} maps pixel_range {pr!r} beyond ±1e6 (std too small?)"
        )

    if d["format"] not in DATA_FORMATS:
        raise WorkflowError(
            f"{path}: [data] format {d['format']!r} is not supported; expected one of {DATA_FORMATS}"
        )
    if not 2 <= d["classes"] <= 100_000:
        raise WorkflowError(f"{path}: [data] classes must be 2..100,000, got {d['classes']!r}")
    keys = {"idx": {"dir"}, "npz": {"path"}, "images": {"dir", "labels"}}[d["format"]]
    for key in {"dir", "path", "labels"} - keys:
        if key in d:
            raise WorkflowError(f"{path}: [data] {key!r} does not apply to format {d['format']!r}")
    required = set() if d["format"] == "idx" else keys  # IDX: the MNIST cache unless a dir is given
    for key in required:
        if key not in d:
            raise WorkflowError(f"{path}: [data] missing key {key!r} (format {d['format']!r})")
    for key in ("calibration_size", "calibration_seed"):
        if key in d and d["format"] == "idx":
            raise WorkflowError(
                f"{path}: [data] {key} does not apply to MNIST (results/calibration.json is its subset)"
            )
    if "calibration_size" in d:
        _positive(path, "[data] calibration_size", d["calibration_size"])
    if d.get("calibration_seed", 0) < 0:
        raise WorkflowError(f"{path}: [data] calibration_seed must be >= 0, got {d['calibration_seed']}")
    if d["format"] == "npz" and not d["path"].endswith(".npz"):
        raise WorkflowError(f"{path}: [data] path {d['path']!r} must name a .npz file")
    t = doc.get("train")
    if m["source"] == "paddle" and t is None:
        raise WorkflowError(f"{path}: missing section [train] (source 'paddle' is trained here)")
    if t is not None:
        for key in ("epochs", "batch", "lr"):
            _positive(path, f"[train] {key}", t[key])
        if t["optimizer"] != "adam":
            raise WorkflowError(
                f"{path}: [train] optimizer {t['optimizer']!r} is not supported; expected 'adam'"
            )
    recipe = doc.get("quantize", {}).get("recipe", {})
    from lenet_edge.quantize.recipe import QuantRecipe

    try:
        QuantRecipe.from_dict(recipe)
    except ConfigError as e:
        raise WorkflowError(f"{path}: [quantize] recipe: {e}") from None
    ref = doc.get("reference", {})
    if "published_top1" in ref and not 0 <= ref["published_top1"] <= 1:
        raise WorkflowError(
            f"{path}: [reference] published_top1 is a fraction in [0, 1], got {ref['published_top1']!r}"
        )
    return Workflow(
        path=path,
        name=m["name"],
        label=m["label"],
        source=m["source"],
        model_class=m.get("class"),
        checkpoint=checkpoint,
        model_file=model_file,
        params=m["params"],
        color=m.get("color", "#555555"),
        input=InputSpec(tuple(shape), i["layout"], i["dtype"], (pr[0], pr[1]), norm["mean"], norm["std"]),
        data_format=d["format"],
        data_dir=_inside(path, "[data] dir", d["dir"]) if "dir" in d else None,
        data_path=_inside(path, "[data] path", d["path"]) if "path" in d else None,
        labels_file=_inside(path, "[data] labels", d["labels"]) if "labels" in d else None,
        calibration_size=d.get("calibration_size"),
        calibration_seed=d.get("calibration_seed"),
        tolerances=_tolerances(path, doc.get("tolerances", {})),
        classes=d["classes"],
        train=TrainSpec(t["epochs"], t["batch"], float(t["lr"]), t["optimizer"]) if t is not None else None,
        quantize_recipe=recipe,
        published_top1=ref.get("published_top1"),
        published_source=ref.get("source", ""),
        baseline=doc.get("study", {}).get("baseline"),
    )


def workflow_dir() -> Path:
    """The shipped workflows, or LENET_EDGE_WORKFLOWS (a folder of them) when set (empty: unset,
    as for MNIST_DIR; it meant the current folder)."""
    return Path(os.environ.get("LENET_EDGE_WORKFLOWS") or WORKFLOW_DIR)


# Workflow files given with --workflow: added to the folder's (replacing one of the same name), and
# passed on to the stage's child processes through the environment.
EXTRA_ENV = "LENET_EDGE_WORKFLOW_FILES"


def _extra_files() -> tuple[Path, ...]:
    return tuple(Path(x) for x in os.environ.get(EXTRA_ENV, "").split(os.pathsep) if x)


@cache
def _load(folder: Path, extra: tuple[Path, ...], named: str) -> dict[str, Workflow]:
    if not folder.is_dir():
        raise WorkflowError(f"{named}: no workflow folder")
    flows = {p.stem: parse_workflow(p) for p in sorted(folder.glob("*.toml"))}
    flows |= {p.stem: parse_workflow(p) for p in extra}
    if not flows:
        raise WorkflowError(f"{named}: no workflow files (*.toml)")
    for wf in flows.values():
        if wf.baseline is not None and wf.baseline not in flows:
            raise WorkflowError(f"{wf.path}: [study] baseline {wf.baseline!r} has no workflow in {folder}")
        if wf.baseline == wf.name:
            raise WorkflowError(f"{wf.path}: [study] baseline is the model itself")
    return dict(sorted(flows.items()))


def workflows() -> dict[str, Workflow]:
    """Every workflow, validated, by model name."""
    folder = workflow_dir()
    named = f"LENET_EDGE_WORKFLOWS={folder}" if os.environ.get("LENET_EDGE_WORKFLOWS") else str(folder)
    return _load(folder, _extra_files(), named)


def use_workflow(path: Path) -> str:
    """Take the workflow file `path` (validated now) for this process and its children; its model name."""
    path = Path(path).resolve()
    name = parse_workflow(path).name
    files = [p for p in _extra_files() if p.stem != path.stem] + [path]
    os.environ[EXTRA_ENV] = os.pathsep.join(map(str, files))
    return name


def get(name: str) -> Workflow:
    flows = workflows()
    if name not in flows:
        raise ConfigError(f"unknown model {name!r}; expected one of {sorted(flows)} (a workflow per model)")
    return flows[name]


def model_names() -> list[str]:
    """The models with a workflow file, in name order."""
    return sorted(workflows())


class WorkflowMapping(Mapping):
    """Model name -> a value taken from its workflow (all workflows, or those of one `source`):
    registries such as the model classes or the default INT8 recipes read the workflow files on
    each access, so --workflow files count and nothing names a model."""

    def __init__(self, value: Callable[[Workflow], Any], source: str | None = None):
        self._value, self._source = value, source

    def _flows(self) -> dict[str, Workflow]:
        return {n: wf for n, wf in workflows().items() if self._source in (None, wf.source)}

    def __getitem__(self, name: str) -> Any:
        flows = self._flows()
        if name not in flows:
            raise KeyError(name)
        return self._value(flows[name])

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._flows()))

    def __len__(self) -> int:
        return len(self._flows())


def add_model_flags(p: Any) -> None:
    """--model (a workflow's name, or all) and --workflow (a workflow file of one's own)."""
    from lenet_edge.runtime.cli import add_common

    try:
        names = model_names()
    except WorkflowError:  # the stage reports the broken workflow when it runs; --help still works
        names = []  # and --model takes any name (with choices of only "all", argparse hid the cause)
    add_common(p, "model", "workflow", model={"choices": [*names, "all"]} if names else {})


def selected(model: str, workflow: Path | None = None) -> list[str]:
    """The models --model (and --workflow) stand for."""
    if workflow is not None:
        name = use_workflow(workflow)
        if model not in ("all", name):
            raise WorkflowError(f"{workflow}: --model {model} but this workflow is for {name!r}")
        return [name]
    return model_names() if model == "all" else [get(model).name]


def comparison() -> tuple[str, str]:
    """The study's pair (baseline, candidate): the one workflow that names a baseline."""
    pairs = [(wf.baseline, wf.name) for wf in workflows().values() if wf.baseline]
    if len(pairs) != 1:
        raise WorkflowError(
            f"{workflow_dir()}: the study compares one pair; {len(pairs)} workflows name a [study] baseline"
        )
    return pairs[0]


def data_source(name: str) -> Path | None:
    """Where a model's data set is: its .npz file (an image folder's converted one), its IDX
    folder, or None (MNIST's cache)."""
    wf = get(name)
    if wf.data_format == "images":
        from lenet_edge.image_folder import image_folder_npz

        return image_folder_npz(wf.name, wf.data_dir, wf.labels_file, wf.input.shape, wf.classes)
    return wf.data_path or wf.data_dir


def check_data_shape(wf: Workflow, image_dims: tuple[int, ...], source: Path) -> None:
    """The data set's images fit the workflow's input shape ([H, W] images have one channel)."""
    dims = (1, *image_dims) if len(image_dims) == 2 else tuple(image_dims)
    if dims != wf.input.shape:
        raise WorkflowError(
            f"{wf.path}: [input] shape {list(wf.input.shape)} does not match the data: "
            f"{source} holds images of {' x '.join(map(str, dims))} (C x H x W)"
        )
