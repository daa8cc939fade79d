"""Fuzz tier: hypothesis-generated malformed files and arrays at every entry point.

Every generated case must end in one of two ways:
  * a user error: exit code 2, exactly one `error:` line on stderr, no traceback anywhere; or
  * a success, where the generated input happens to be valid (and success is right for it).
Either way nothing may change outside the case's temp folder: the sha256 of every file in the
repository's results/ and of the case's own input files is compared before and after, and no new
file may appear in results/.

The CLIs run in-process through `runtime.cli.run(main, argv)` (fast enough for hypothesis); an
exception escaping it is a traceback a user would see, i.e. a bug. One representative case per
entry point also runs as a real subprocess to prove the process exit path.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import math
import os
import re
import reprlib
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory, gettempdir
from typing import Any, NamedTuple

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from lenet_edge.runtime.cli import run
from lenet_edge.runtime.errors import ContractError, DataError
from lenet_edge.runtime.files import sha256_bytes, sha256_file
from lenet_edge.runtime.mnist import read_idx
from tests.conftest import ROOT, assert_one_line_error, run_cli, write_idx

pytestmark = [pytest.mark.fuzz, pytest.mark.xdist_group("fuzz")]

RESULTS = ROOT / "results"

# hypothesis caches (constants, unicode tables) go to the temp folder, not into the working tree
set_hypothesis_home_dir(Path(gettempdir()) / "lenet-edge-hypothesis")

FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,  # nothing written into the working tree (.hypothesis/)
    print_blob=False,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
# The benchmark starts one or two child processes per case.
FUZZ_SLOW = settings(FUZZ, max_examples=15)


# ---- the three assertions ---------------------------------------------------------------------


def _digest(p: Path) -> Any:
    """sha256 of a file; a folder as {name: digest} (recursively); a symlink as its target."""
    if p.is_symlink():
        return ("symlink", os.readlink(p))
    if p.is_dir():
        return {c.name: _digest(c) for c in sorted(p.iterdir())}
    if p.is_file():
        return sha256_file(p)
    return None


@contextmanager
def nothing_changes(*inputs: Path) -> Iterator[None]:
    """results/ (every file, no new ones) and the case's own input files are the same afterwards."""
    before = {"results/": _digest(RESULTS), **{str(p): _digest(p) for p in inputs}}
    yield
    after = {"results/": _digest(RESULTS), **{str(p): _digest(p) for p in inputs}}
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"changed outside the temp folder: {changed}"


def call(main: Callable[[list[str] | None], int], argv: list[Any], capsys: Any) -> tuple[int, str, str]:
    """A CLI's main as its __main__ guard runs it; an escaping exception fails the test (a traceback)."""
    capsys.readouterr()
    try:
        rc = run(main, [str(a) for a in argv])
    except SystemExit as e:
        pytest.fail(f"SystemExit({e.code}) for file contents (argparse?): {capsys.readouterr().err[-1500:]}")
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, (rc, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err[-2000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def outcome(rc: int, err: str, may_succeed: bool, *needles: str) -> bool:
    """True on a success (which must be allowed for this input), else a one-line user error."""
    if rc == 0:
        assert may_succeed, f"exit 0 for an input that must fail; stderr: {err[-1500:]}"
        assert "Traceback" not in err, err[-3000:]
        assert not [ln for ln in err.splitlines() if ln.startswith("error:")], err[-1500:]
        return True
    one_line_error(rc, err, *needles)
    return False


@contextmanager
def case_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh temp folder per hypothesis example (tmp_path is shared by all examples of a test)."""
    with TemporaryDirectory(dir=tmp_path) as d:
        yield Path(d)


# A child process's traceback turned into "error: SomeError: ..." by the parent is still a crash.
RAW_EXCEPTION = re.compile(r"^error: (\w+\.)*[A-Z]\w*: ")  # "error: pkg.mod.SomeError: ..."


# ---- generated values shared by the JSON entry points -------------------------------------------

NASTY_TEXT = [
    "",
    "   ",
    "..",
    "../../tolerances",
    "1/../../tolerances",
    "/etc/passwd",
    "a|b|c",
    "line\nbreak",
    "tab\tcr\r",
    "x" * 201,
    "x" * 5000,
    "\ud800",  # a lone surrogate: valid JSON ("\\ud800"), not encodable as UTF-8
    "nul\x00byte",
    "<b>`code`</b>",
    "C:\\evil",
    "--force",
]
HUGE_INTS = [0, -1, 1, 2**31, 2**63, 2**64, 10**30, 10**400]
WEIRD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NASTY_TEXT),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
RANDOM_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlong = 60


def short(x: Any) -> str:
    """repr with long strings and numbers elided (hypothesis prints the case)."""
    return _SHORT.repr(x)


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


class Blob(bytes):
    """File bytes that print as a short description (hypothesis prints a failing case)."""

    desc: str

    def __new__(cls, data: bytes, desc: str | None = None) -> Blob:
        obj = super().__new__(cls, data)
        obj.desc = desc or short(bytes(data))
        return obj

    def __repr__(self) -> str:
        return f"Blob({self.desc})"


def edited(template: Any, edits: list[tuple[tuple[Any, ...], Any, bool]]) -> Blob:
    """The template with (path, value, delete) edits, as JSON bytes."""
    return Blob(dumps(mutate(template, edits)), f"template, edits={short(edits)}")


def with_huge_literal(template: Any, path: tuple[Any, ...]) -> Blob:
    data = dumps(mutate(template, [(path, SENTINEL, False)])).replace(str(SENTINEL).encode(), HUGE_LITERAL)
    return Blob(data, f"template, {path} = <a 5000-digit integer literal>")


# JSON texts json.dumps cannot write: an integer literal longer than Python's 4300-digit limit
# (json.loads raises a plain ValueError, not JSONDecodeError), deep nesting, a BOM, bad UTF-8.
HUGE_LITERAL = b"1" * 5000
SENTINEL = 987_654_321_987_654_321
RAW_JSON = [
    Blob(b"[" + HUGE_LITERAL + b"]", "[<a 5000-digit integer literal>]"),
    Blob(b'{"indices": [' + HUGE_LITERAL + b"]}", '{"indices": [<a 5000-digit integer literal>]}'),
    Blob(b"[" * 100_000 + b"]" * 100_000, "[[[...]]] nested 100,000 deep"),
    Blob(b"\xef\xbb\xbf{}"),
    Blob(b'{"schema": "\xff\xfe"}'),
    Blob(b"NaN"),
    Blob(b"-Infinity"),
    Blob(b""),
]


def mutate(doc: Any, edits: list[tuple[tuple[Any, ...], Any, bool]]) -> Any:
    """Apply (path, value, delete) edits to a deep copy; an edit whose path is gone is skipped."""
    doc = copy.deepcopy(doc)
    for path, value, delete in edits:
        try:
            parent = doc
            for k in path[:-1]:
                parent = parent[k]
            if delete:
                del parent[path[-1]]
            elif isinstance(parent, list) and path[-1] >= len(parent):
                parent.append(value)
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    return doc


def json_files(template: dict[str, Any], paths: list[tuple[Any, ...]], values: Any = WEIRD) -> Any:
    """File bytes: random bytes, random JSON, or the valid template with 0..3 edits."""
    edit = st.tuples(st.sampled_from(paths), values, st.booleans())
    return st.one_of(
        st.binary(max_size=64).map(Blob),
        st.sampled_from(RAW_JSON),
        RANDOM_JSON.map(lambda doc: Blob(dumps(doc))),
        st.lists(edit, min_size=1, max_size=3).map(lambda e: edited(template, e)),
        st.just(edited(template, [])),
        st.sampled_from(paths).map(lambda p: with_huge_literal(template, p)),
    )


# ---- ONNX models: valid, broken, and valid graphs that break the contract -----------------------

PIX = ["N", 1, 28, 28]


def _models() -> dict[str, bytes]:
    from onnx import TensorProto as T
    from onnx import helper

    from lenet_edge.export.variants import floor_model

    node = helper.make_node

    def vi(name: str, shape: Any, elem: int = T.FLOAT) -> Any:
        return helper.make_tensor_value_info(name, elem, shape)

    def i64(name: str, *vals: int) -> Any:
        return helper.make_tensor(name, T.INT64, [len(vals)], list(vals))

    def f32(name: str, val: float) -> Any:
        return helper.make_tensor(name, T.FLOAT, [], [val])

    def graph(
        nodes: list[Any],
        inputs: list[Any] | None = None,
        outputs: list[Any] | None = None,
        inits: tuple[Any, ...] = (),
        k: int = 10,
        opset: int = 13,
        ir: int = 8,
    ) -> bytes:
        g = helper.make_graph(
            nodes,
            "fuzz",
            inputs if inputs is not None else [vi("pixels", PIX)],
            outputs if outputs is not None else [vi("scores", ["N", 10])],
            initializer=[i64("s0", 0), i64("sk", k), i64("ax1", 1), *inits],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="fuzz")
        m.ir_version = ir
        return m.SerializeToString()

    flat = node("Flatten", ["pixels"], ["flat"], axis=1)

    def sl(src: str = "flat", dst: str = "scores") -> Any:
        return node("Slice", [src, "s0", "sk", "ax1"], [dst])

    cast_in = [node("Cast", ["pixels"], ["xf"], to=T.FLOAT), node("Flatten", ["xf"], ["flat"], axis=1)]
    return {
        "floor": floor_model().SerializeToString(),
        "symbolic_channel": graph([flat, sl()], [vi("pixels", ["N", "C", 28, 28])]),
        "static_batch_1": graph([flat, sl()], [vi("pixels", [1, 1, 28, 28])], [vi("scores", [1, 10])]),
        "static_batch_2": graph([flat, sl()], [vi("pixels", [2, 1, 28, 28])], [vi("scores", [2, 10])]),
        "input_named_x": graph(
            [node("Flatten", ["x"], ["flat"], axis=1), sl()], [vi("x", PIX)], [vi("scores", ["N", 10])]
        ),
        "input_float64": graph([*cast_in, sl()], [vi("pixels", PIX, T.DOUBLE)]),
        "input_uint8": graph([*cast_in, sl()], [vi("pixels", PIX, T.UINT8)]),
        "input_3_channels": graph([flat, sl()], [vi("pixels", ["N", 3, 28, 28])]),
        "input_32x32": graph([flat, sl()], [vi("pixels", ["N", 1, 32, 32])]),
        "input_rank2": graph([flat, sl()], [vi("pixels", ["N", 784])]),
        "input_unknown_rank": graph([flat, sl()], [vi("pixels", None)]),
        "input_batch_0": graph([flat, sl()], [vi("pixels", [0, 1, 28, 28])], [vi("scores", [0, 10])]),
        "two_inputs": graph([flat, sl()], [vi("pixels", PIX), vi("extra", PIX)]),
        "output_named_logits": graph([flat, sl(dst="logits")], outputs=[vi("logits", ["N", 10])]),
        "output_3_columns": graph([flat, sl()], outputs=[vi("scores", ["N", 3])], k=3),
        "output_declares_10_computes_3": graph([flat, sl()], k=3),
        "output_float64": graph(
            [flat, sl(dst="s"), node("Cast", ["s"], ["scores"], to=T.DOUBLE)],
            outputs=[vi("scores", ["N", 10], T.DOUBLE)],
        ),
        "output_rank3": graph(
            [flat, sl(dst="s"), node("Unsqueeze", ["s", "ax1"], ["scores"])],
            outputs=[vi("scores", ["N", 1, 10])],
        ),
        "two_outputs": graph([flat, sl()], outputs=[vi("scores", ["N", 10]), vi("flat", ["N", 784])]),
        # NaN wherever a pixel is > 0; -0.0 (finite) where it is 0, as in MNIST's blank top row
        "nan_sqrt_neg": graph([flat, node("Neg", ["flat"], ["n"]), node("Sqrt", ["n"], ["r"]), sl("r")]),
        "nan_always": graph(
            [
                flat,
                node("Add", ["flat", "one"], ["a"]),
                node("Neg", ["a"], ["n"]),
                node("Sqrt", ["n"], ["r"]),
                sl("r"),
            ],
            inits=(f32("one", 1.0),),
        ),
        "inf_output": graph([flat, node("Div", ["flat", "zero"], ["d"]), sl("d")], inits=(f32("zero", 0.0),)),
        # load fine, fail inside session.run
        "runtime_reshape_fails": graph(
            [flat, node("Reshape", ["flat", "shape"], ["scores"])], inits=(i64("shape", 0, 10),)
        ),
        "runtime_gather_out_of_range": graph(
            [flat, node("Gather", ["flat", "idx"], ["scores"], axis=1)],
            inits=(i64("idx", *range(1000, 1010)),),
        ),
        "opset_99": graph([flat, sl()], opset=99),
        "ir_version_99": graph([flat, sl()], ir=99),
        "unknown_op": graph([flat, node("NoSuchOp", ["flat"], ["scores"])]),
        "output_never_computed": graph([flat]),
    }


MODELS = _models()
FLOOR = MODELS["floor"]
# Valid models: success is right for them (everything else must fail, except where noted).
EVAL_MAY_SUCCEED = {
    "floor",
    "symbolic_channel",
    "nan_sqrt_neg",
    "input_uint8",
    "static_batch_1",
    "static_batch_2",
}
# the benchmark feeds each model pixels of its own shape: a 3-channel, 32x32 or 3-class model is a
# model of its own there (evaluate on MNIST still refuses them: wrong shape, labels beyond K)
BENCH_MAY_SUCCEED = {
    "floor",
    "symbolic_channel",
    "static_batch_1",
    "static_batch_2",
    "input_uint8",
    "input_3_channels",
    "input_32x32",
    "output_3_columns",
}


class ModelFile(NamedTuple):
    kind: str  # a variant name, or "random", "truncated", "flipped"
    data: bytes
    desc: str

    def __repr__(self) -> str:  # what hypothesis prints for a failing case
        return f"ModelFile({self.desc})"


def variant(name: str) -> ModelFile:
    return ModelFile(name, MODELS[name], repr(name))


@st.composite
def model_files(draw: Any) -> ModelFile:
    """A named variant, random bytes, or the floor model cut short or with one bit flipped."""
    kind = draw(st.sampled_from(["variant", "variant", "random", "truncated", "flipped"]))
    if kind == "variant":
        return variant(draw(st.sampled_from(sorted(MODELS))))
    if kind == "random":
        data = draw(st.binary(max_size=200))
        return ModelFile("random", data, repr(data))
    if kind == "truncated":
        k = draw(st.integers(0, len(FLOOR) - 1))
        return ModelFile("truncated", FLOOR[:k], f"floor[:{k}]")
    i, bit = draw(st.integers(0, len(FLOOR) - 1)), draw(st.integers(0, 7))
    return ModelFile(
        "flipped",
        FLOOR[:i] + bytes([FLOOR[i] ^ (1 << bit)]) + FLOOR[i + 1 :],
        f"floor ^ bit {bit} of byte {i}",
    )


def _may_succeed(kind: str, allowed: set[str]) -> bool:
    # random/truncated/flipped bytes can still be a valid model (e.g. cut after the graph)
    return kind in allowed or kind in ("random", "truncated", "flipped")


# ---- IDX files -----------------------------------------------------------------------------------

IDX_SIZES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}
MAX_U32 = 2**32 - 1


@st.composite
def idx_headered(draw: Any) -> bytes:
    """A header with any magic/type/ndim/dims and a payload of exactly, nearly or not the right size."""
    zero = draw(st.sampled_from([0, 0, 0, 1, 0x1F8B, 0xFFFF]))
    code = draw(st.sampled_from(sorted(IDX_SIZES)) | st.integers(0, 255))
    ndim = draw(st.sampled_from([0, 1, 2, 3, 4, 64, 65, 100, 255]) | st.integers(0, 255))
    mode = draw(st.sampled_from(["ones", "small", "huge", "zero_and_huge", "random"]))
    if mode == "ones":
        dims = [1] * ndim
    elif mode == "huge":
        dims = [MAX_U32] * ndim
    elif mode == "zero_and_huge":
        dims = [0] + [MAX_U32] * max(0, ndim - 1) if ndim else []
    else:
        hi = 3 if mode == "small" else MAX_U32
        head = draw(st.lists(st.integers(0, hi), min_size=min(ndim, 4), max_size=min(ndim, 4)))
        dims = (head + [1] * ndim)[:ndim]
    header = zero.to_bytes(2, "big") + bytes([code, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims)
    size = math.prod(dims) * IDX_SIZES.get(code, 1)
    cut = draw(st.sampled_from(["exact", "exact", "short", "long", "header_only", "cut_header"]))
    if cut == "cut_header":
        return header[: draw(st.integers(0, max(0, len(header) - 1)))]
    if cut == "header_only" or size > 1 << 16:
        return header
    n = {"exact": size, "short": max(0, size - 1), "long": size + 1}[cut]
    fill = draw(st.binary(min_size=1, max_size=4))
    return header + (fill * (n // len(fill) + 1))[:n]


def idx_valid(ndim: int) -> Any:
    """A well-formed uint8 IDX file of `ndim` dimensions (images: n x h x w; labels: n)."""
    shape = st.tuples(st.integers(0, 3), st.sampled_from([28, 28, 5]), st.sampled_from([28, 28, 1]))
    if ndim == 1:
        shape = st.tuples(st.integers(0, 3))

    def to_bytes(arr: np.ndarray) -> bytes:
        return bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes()

    return shape.flatmap(lambda s: hnp.arrays(np.uint8, s, elements=st.integers(0, 255))).map(to_bytes)


def idx_blobs(ndim: int = 3) -> Any:
    valid = idx_valid(ndim)
    return st.one_of(
        st.binary(max_size=48),
        idx_headered(),
        valid,
        valid.flatmap(lambda b: st.integers(0, max(0, len(b) - 1)).map(lambda k: b[:k])),  # truncated
        valid.map(lambda b: gzip.compress(b, mtime=0)),  # still gzip-compressed
    )


# A file slot holds bytes, or is missing, or is a folder in place of the file.
SLOT_SPECIAL = st.sampled_from(["<missing>", "<directory>"])


def put(path: Path, content: bytes | str) -> None:
    if content == "<missing>":
        return
    if content == "<directory>":
        path.mkdir()
        (path / "inside").write_bytes(b"\0\0\x08\x01")
        return
    path.write_bytes(content)


# ==== runtime.mnist.read_idx / load_split ========================================================


@FUZZ
@given(blob=st.one_of(idx_blobs(3), idx_blobs(1), SLOT_SPECIAL))
@example(blob=bytes([0, 0, 8, 4]) + MAX_U32.to_bytes(4, "big") * 4)  # product overflows int64
def test_read_idx_raises_only_data_error(blob, tmp_path):
    check_read_idx(blob, tmp_path)


def check_read_idx(blob: bytes | str, tmp_path: Path) -> None:
    with case_dir(tmp_path) as d:
        p = d / "f-idx3-ubyte"
        put(p, blob)
        with nothing_changes(p):
            try:
                arr = read_idx(p)
            except DataError as e:
                assert str(p) in str(e)
                return
        # it parsed: the array is what the header says, and the file held exactly that
        data = p.read_bytes()
        ndim = data[3]
        dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
        assert arr.shape == dims and len(data) == 4 + 4 * ndim + arr.nbytes


@FUZZ
@given(
    images=st.one_of(idx_blobs(3), SLOT_SPECIAL),
    labels=st.one_of(idx_blobs(1), SLOT_SPECIAL),
)
def test_load_split_unverified_raises_only_data_error(images, labels, tmp_path):
    check_load_split(images, labels, tmp_path)


def check_load_split(images: bytes | str, labels: bytes | str, tmp_path: Path) -> None:
    from lenet_edge.runtime.mnist import load_split

    with case_dir(tmp_path) as d:
        img, lab = d / "t10k-images-idx3-ubyte", d / "t10k-labels-idx1-ubyte"
        put(img, images)
        put(lab, labels)
        with nothing_changes(img, lab):
            try:
                split = load_split("test", d, verify=False)
            except DataError:
                return
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (28, 28)
        assert split.labels.dtype == np.int64 and split.labels.shape == (split.images.shape[0],)
        assert not split.labels.size or 0 <= split.labels.min() <= split.labels.max() <= 9


@pytest.fixture(scope="module")
def mnist_hashes(mnist_dir):
    """The real MNIST files (symlinked into the cases' data folders) are the same afterwards."""
    from lenet_edge.runtime.mnist import MNIST_FILES

    before = {n: sha256_file(mnist_dir / n) for n in MNIST_FILES}
    yield mnist_dir
    assert {n: sha256_file(mnist_dir / n) for n in MNIST_FILES} == before


@FUZZ
@given(
    broken=st.sampled_from(
        [
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
        ]
    ),
    content=st.one_of(
        idx_blobs(3),
        idx_blobs(1),
        SLOT_SPECIAL,
        st.integers(0, 4096).map(lambda k: ("<real prefix>", k)),
        st.just("<real gzip>"),
    ),
)
def test_evaluate_cli_with_malformed_idx_files(broken, content, mnist_hashes, tmp_path, capsys):
    from lenet_edge.runtime import evaluate
    from lenet_edge.runtime.mnist import MNIST_FILES

    with case_dir(tmp_path) as d:
        data = d / "mnist"
        data.mkdir()
        for name in MNIST_FILES:
            if name != broken:
                (data / name).symlink_to(mnist_hashes / name)
        if isinstance(content, tuple):  # the real file cut short
            content = (mnist_hashes / broken).read_bytes()[: content[1]]
        elif content == "<real gzip>":
            content = gzip.compress((mnist_hashes / broken).read_bytes(), compresslevel=1, mtime=0)
        put(data / broken, content)
        model = d / "floor.onnx"
        model.write_bytes(FLOOR)
        with nothing_changes(data, model):
            rc, out, err = call(evaluate.main, [model, "--data-dir", data], capsys)
        # evaluate reads the test split only: a broken train file is none of its business
        if outcome(rc, err, broken.startswith("train"), broken):
            assert "top-1" in out


# ==== ONNX models: runtime.evaluate and runtime.bench =============================================


@FUZZ
@given(model=model_files(), against=st.booleans())
@example(model=variant("nan_always"), against=False)
@example(model=variant("output_declares_10_computes_3"), against=False)
def test_evaluate_cli_with_malformed_models(model, against, mnist_hashes, tmp_path, capsys):
    check_evaluate_model(model, against, mnist_hashes, tmp_path, capsys)


def check_evaluate_model(model: ModelFile, against: bool, mnist: Path, tmp_path: Path, capsys: Any) -> None:
    from lenet_edge.runtime import evaluate

    kind = model.kind
    with case_dir(tmp_path) as d:
        p = d / f"{kind}.onnx"
        p.write_bytes(model.data)
        floor = d / "floor.onnx"
        floor.write_bytes(FLOOR)
        argv = [floor, "--against", p] if against else [p]
        with nothing_changes(p, floor):
            rc, out, err = call(evaluate.main, [*argv, "--data-dir", mnist], capsys)
        if outcome(rc, err, _may_succeed(kind, EVAL_MAY_SUCCEED), str(p)):
            assert "top-1" in out


def _bench_args(out: Path) -> list[Any]:
    one = ["--batch", "1", "--threads", "1", "--calls", "run"]
    return [*one, "--runs", "5", "--warmup", "1", "--rounds", "1", "--json", out]


@FUZZ_SLOW
@given(model=model_files())
@example(model=variant("nan_always"))
@example(model=variant("static_batch_2"))
def test_bench_cli_with_malformed_models(model, tmp_path, capsys):
    check_bench_model(model, tmp_path, capsys)


def check_bench_model(model: ModelFile, tmp_path: Path, capsys: Any) -> None:
    from lenet_edge.runtime import bench

    kind = model.kind
    may = _may_succeed(kind, BENCH_MAY_SUCCEED)
    with case_dir(tmp_path) as d:
        p = d / f"{kind}.onnx"
        p.write_bytes(model.data)
        out = d / "bench" / "b.json"
        with nothing_changes(p):
            # the child mode in-process: a crash there would reach the user only as a parent's one line
            rc, child_out, err = call(
                bench.main, ["--startup", p, "--batch", "1", "--threads", "1", "--calls", "run"], capsys
            )
            if outcome(rc, err, may, str(p)):
                json.loads(child_out)
            rc, _, err = call(bench.main, [p, *_bench_args(out)], capsys)
        if outcome(rc, err, may):
            report = json.loads(out.read_text())
            assert report["schema"] == bench.SCHEMA and out.with_suffix(".md").is_file()
        else:
            line = one_line_error(rc, err)
            assert not RAW_EXCEPTION.match(line), f"a child's traceback reduced to one line: {line}"
            assert not out.exists()


# ==== runtime.runner.OnnxRunner.predict ============================================================

_RUNNER: list[Any] = []


def floor_runner() -> Any:
    if not _RUNNER:
        from lenet_edge.runtime.runner import OnnxRunner

        _RUNNER.append(OnnxRunner(FLOOR))
    return _RUNNER[0]


def pixel_arrays() -> Any:
    """Mostly [N,1,28,28] float32 (raw, scaled to [0,1], with NaN/inf, <0, >255), else any dtype/shape."""
    n = st.integers(0, 3)
    contract_shape = n.map(lambda k: (k, 1, 28, 28))
    value = st.one_of(
        st.integers(0, 255).map(float),
        st.floats(0, 1, width=32),
        st.floats(width=32, allow_nan=True, allow_infinity=True),
        st.sampled_from([-1.0, -0.0, 255.5, 256.0, 1e30, math.nan, math.inf, -math.inf, 0.5]),
    )
    fill = st.sampled_from([0.0, 1.0, 7.0, 255.0, 0.25])
    float32 = hnp.arrays(np.float32, contract_shape, elements=value, fill=fill)
    scaled = hnp.arrays(np.float32, contract_shape, elements=st.floats(0, 1, width=32), fill=st.just(0.5))
    dtypes = st.sampled_from([np.float64, np.float16, np.uint8, np.int32, np.bool_, np.complex64, ">f4"])
    any_shape = st.one_of(contract_shape, hnp.array_shapes(min_dims=0, max_dims=5, max_side=4))
    other = st.one_of(
        hnp.arrays(dtypes, contract_shape, fill=st.just(0)),
        hnp.arrays(np.float32, any_shape, elements=st.floats(0, 255, width=32)),
    )
    layout = st.sampled_from(["c", "c", "fortran", "reversed", "strided"])
    return st.tuples(st.one_of(float32, scaled, other), layout)


def _lay_out(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "fortran":
        return np.asfortranarray(x)
    if layout == "reversed" and x.ndim:
        return x[..., ::-1]
    if layout == "strided" and x.ndim:
        return np.repeat(x, 2, axis=-1)[..., ::2]  # same values, non-contiguous view
    return x


def contract_ok(x: Any) -> bool:
    """The contract, written out independently of runtime.contract."""
    if not isinstance(x, np.ndarray) or x.dtype not in (np.dtype(np.float32), np.dtype(np.uint8)):
        return False
    if x.ndim != 4 or x.shape[1:] != (1, 28, 28) or x.shape[0] < 1:
        return False
    if x.dtype == np.uint8:
        return True
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 255:
        return False
    return not (x.max() <= 1 and (x != np.floor(x)).any())


@FUZZ
@given(case=pixel_arrays())
@example(case=(np.full((1, 1, 28, 28), 0.5, np.float32), "c"))
@example(case=(np.arange(2 * 784, dtype=np.float32).reshape(2, 1, 28, 28) % 256, "reversed"))
@example(case=(np.zeros((0, 1, 28, 28), np.float32), "c"))
def test_runner_predict_returns_the_floor_or_raises_contract_error(case, tmp_path):
    x = _lay_out(*case)
    with nothing_changes():
        try:
            y = floor_runner().predict(x)
        except ContractError:
            assert not contract_ok(x), "a valid batch was refused"
            return
    assert contract_ok(x), "an input breaking the contract was accepted"
    want = np.ascontiguousarray(x).reshape(len(x), -1)[:, :10].astype(np.float32)
    assert y.dtype == np.float32 and np.array_equal(y, want)


def test_runner_predict_refuses_non_arrays():
    for x in (None, [[0.0] * 784], "pixels", 3.0):
        with pytest.raises(ContractError):
            floor_runner().predict(x)


# ==== runtime.bundle check ===========================================================================


def _floor_out(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)[:, :10].astype(np.float32)


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


IMAGES = (np.arange(3 * 784) % 256).astype(np.uint8).reshape(3, 28, 28)
LABELS = np.array([1, 2, 3], np.uint8)
GOOD_INPUTS = _npz(images=IMAGES, labels=LABELS)
GOOD_EXPECTED = _npz(floor=_floor_out(IMAGES))


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


ZIP_GARBAGE = b"PK\x03\x04" + bytes(range(40))
INPUT_FILES = {
    "valid": GOOD_INPUTS,
    "random bytes": b"\x93NUMPY garbage",
    "zip header + garbage": ZIP_GARBAGE,
    "truncated": GOOD_INPUTS[: len(GOOD_INPUTS) // 2],
    "images float32": _npz(images=IMAGES.astype(np.float32), labels=LABELS),
    "images 5x5": _npz(images=np.zeros((3, 5, 5), np.uint8), labels=LABELS),
    "no images": _npz(images=np.zeros((0, 28, 28), np.uint8), labels=np.zeros(0, np.uint8)),
    "labels too few": _npz(images=IMAGES, labels=LABELS[:2]),
    "labels missing": _npz(images=IMAGES),
    "bad CRC": _flip(GOOD_INPUTS, GOOD_INPUTS.index(b"\x93NUMPY") + 300),
}
EXPECTED_FILES = {
    "valid": GOOD_EXPECTED,
    "close": _npz(floor=_floor_out(IMAGES) + np.float32(1e-6)),
    "off by 1e-3": _npz(floor=_floor_out(IMAGES) + np.float32(1e-3)),
    "NaN": _npz(floor=np.full((3, 10), np.nan, np.float32)),
    "strings": _npz(floor=np.full((3, 10), "x")),
    "wrong shape": _npz(floor=np.zeros((3, 9), np.float32)),
    "other key": _npz(other=_floor_out(IMAGES)),
    "zip header + garbage": ZIP_GARBAGE,
    "empty": b"",
}
BUNDLE_MODELS = {"floor": FLOOR, "random bytes": b"\x08\x07garbage", **{k: MODELS[k] for k in MODELS}}


GOOD_FILES = {"data/inputs.npz": GOOD_INPUTS, "data/expected.npz": GOOD_EXPECTED, "models/floor.onnx": FLOOR}


def _bundle_manifest(files: dict[str, bytes]) -> dict[str, Any]:
    return {
        "schema": "lenet-edge/bundle/v1",
        "created_unix": 1_700_000_000,
        "tolerances": {"fp32_max_abs_diff": 1e-4},
        "models": [
            {
                "file": "models/floor.onnx",
                "precision": "fp32",
                "reduce_range": None,
                "expected_key": "floor",
                "expected_key_reference_kernels": None,
                "static_batch": None,
            }
        ],
        "files": {name: sha256_bytes(data) for name, data in sorted(files.items())},
    }


BUNDLE_NAMES = [
    "../escape",
    "../../results/reference.json",
    "/etc/passwd",
    "a\\b",
    "",
    ".",
    "data/../../x",
    "models/",
    "./data/inputs.npz",
    "a" * 300,  # longer than a file name may be (ENAMETOOLONG)
    "nul\x00byte",
    "\ud800",
]
BUNDLE_PATHS: list[tuple[Any, ...]] = [
    ("schema",),
    ("files",),
    ("files", "data/inputs.npz"),
    ("files", "data/expected.npz"),
    ("files", "models/floor.onnx"),
    ("tolerances",),
    ("tolerances", "fp32_max_abs_diff"),
    ("models",),
    ("models", 0),
    ("models", 1),
    ("models", 0, "file"),
    ("models", 0, "precision"),
    ("models", 0, "reduce_range"),
    ("models", 0, "expected_key"),
    ("models", 0, "expected_key_reference_kernels"),
]
BUNDLE_VALUES = st.one_of(
    WEIRD,
    st.sampled_from(["fp32", "int8", "floor", "models/floor.onnx", "lenet-edge/bundle/v1", "0" * 64, "ABC"]),
    st.just([]),
)
BUNDLE_EDITS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(BUNDLE_PATHS), BUNDLE_VALUES, st.booleans()),
        # a listed file whose name leaves the bundle (its digest is well-formed)
        st.sampled_from(BUNDLE_NAMES).map(lambda n: (("files", n), "0" * 64, False)),
        st.sampled_from(BUNDLE_NAMES).map(lambda n: (("models", 0, "file"), n, False)),
    ),
    max_size=3,
)


class BundleCase(NamedTuple):
    manifest: bytes | str  # manifest.json's bytes, or "<missing>" / "<directory>"
    files: dict[str, bytes]  # written beside it
    may_succeed: bool
    desc: str

    def __repr__(self) -> str:  # what hypothesis prints for a failing case
        return f"BundleCase({self.desc})"


def full_bundle(
    inputs: str = "valid", expected: str = "valid", model: str = "floor", edits: Any = ()
) -> BundleCase:
    """A bundle whose files are all there with the right digests (before `edits` to the manifest)."""
    files = {
        "data/inputs.npz": INPUT_FILES[inputs],
        "data/expected.npz": EXPECTED_FILES[expected],
        "models/floor.onnx": BUNDLE_MODELS[model],
    }
    manifest = mutate(_bundle_manifest(files), list(edits))
    content_ok = (
        inputs == "valid" and expected in ("valid", "close") and model in ("floor", "symbolic_channel")
    )
    # INT8 models without reduce_range are reported, not checked: any content passes by design
    ms = manifest.get("models") if isinstance(manifest, dict) else None
    reported_only = isinstance(ms, list) and all(
        isinstance(m, dict) and m.get("precision") == "int8" and not m.get("reduce_range") for m in ms
    )
    desc = f"inputs={inputs!r}, expected={expected!r}, model={model!r}, manifest edits={short(list(edits))}"
    return BundleCase(dumps(manifest), files, content_ok or reported_only, desc)


def manifest_only(edits: Any) -> BundleCase:
    """Only manifest.json: the valid template with `edits`; the files it lists are absent."""
    manifest = dumps(mutate(_bundle_manifest(GOOD_FILES), list(edits)))
    return BundleCase(manifest, {}, False, f"manifest only, edits={short(list(edits))}")


def random_manifest(blob: bytes | str) -> BundleCase:
    return BundleCase(blob, {}, False, f"manifest.json={short(blob)}")


def bundles() -> Any:
    return st.one_of(
        st.one_of(
            st.binary(max_size=64), st.sampled_from(RAW_JSON), RANDOM_JSON.map(dumps), SLOT_SPECIAL
        ).map(random_manifest),
        BUNDLE_EDITS.map(manifest_only),
        st.builds(
            full_bundle,
            st.sampled_from(sorted(INPUT_FILES)),
            st.sampled_from(sorted(EXPECTED_FILES)),
            st.sampled_from(sorted(BUNDLE_MODELS)),
            BUNDLE_EDITS,
        ),
    )


def _edit(path: tuple[Any, ...], value: Any) -> list[tuple[tuple[Any, ...], Any, bool]]:
    return [(path, value, False)]


@FUZZ
@given(case=bundles())
@example(case=random_manifest("<missing>"))
def test_bundle_check_with_malformed_bundles(case, tmp_path, capsys):
    check_bundle(case, tmp_path, capsys)


def check_bundle(case: BundleCase, tmp_path: Path, capsys: Any) -> None:
    from lenet_edge.runtime import bundle

    manifest, files, may_succeed, _ = case
    with case_dir(tmp_path) as d:
        b = d / "bundle"
        b.mkdir()
        put(b / "manifest.json", manifest)
        for name, data in files.items():
            (b / name).parent.mkdir(parents=True, exist_ok=True)
            (b / name).write_bytes(data)
        with nothing_changes(b):
            rc, out, err = call(bundle.main, ["check", b], capsys)
        if outcome(rc, err, may_succeed, str(b)):
            assert "models match the host" in out


# ==== runtime.ingest =================================================================================


def _ingest_template() -> dict[str, Any]:
    from lenet_edge.runtime.bench import SCHEMA

    result = {
        "model": "lenet_pool",
        "format": "fp32",
        "runtime": "onnxruntime",
        "call": "run",
        "batch": 1,
        "threads": 1,
        "latency_ms_p50": 0.05,
        "ratio_p50_vs_fp32": 1.0,
    }
    return {
        "schema": SCHEMA,
        "created_unix": 1_700_000_000,
        "environment": {"machine": "aarch64", "cpu": {"model": "Cortex-A72", "isa_flags": ["neon"]}},
        "results": [result, {**result, "format": "int8.qdq", "ratio_p50_vs_fp32": 0.5}],
        "bundle_check": {"summary": "bundle x: 2/2 models match the host"},
    }


INGEST_TEMPLATE = _ingest_template()
INGEST_PATHS: list[tuple[Any, ...]] = [
    ("schema",),
    ("created_unix",),
    ("environment",),
    ("environment", "machine"),
    ("environment", "cpu"),
    ("environment", "cpu", "model"),
    ("environment", "cpu", "isa_flags"),
    ("environment", "cpu", "isa_flags", 0),
    ("results",),
    ("results", 0),
    *[("results", 0, k) for k in INGEST_TEMPLATE["results"][0]],
    ("results", 1, "latency_ms_p50"),
    ("bundle_check",),
    ("bundle_check", "summary"),
]
INGEST_FILES = json_files(INGEST_TEMPLATE, INGEST_PATHS)
DEVICE_FILE = re.compile(r"^[a-z0-9-]+-\d+\.json$")


def _plausible_report(doc: Any) -> bool:
    """What a success implies, written out independently of runtime.ingest.validate."""
    try:
        env, results, t = doc["environment"], doc["results"], doc["created_unix"]
        texts = [env["machine"], env["cpu"]["model"]]
        for r in results:
            texts += [r["model"], r["format"], r["runtime"], r["call"]]
        ints = [t] + [r["batch"] for r in results] + [r["threads"] for r in results]
        nums = [r["latency_ms_p50"] for r in results]
    except (KeyError, TypeError):
        return False
    return (
        all(isinstance(s, str) and s.strip() and len(s) <= 200 for s in texts)
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in ints)
        and 1_577_836_800 <= t <= 4_102_444_800
        and all(isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < math.inf for v in nums)
    )


@FUZZ
@given(blob=INGEST_FILES)
@example(blob=edited(INGEST_TEMPLATE, [(("created_unix",), "1/../../tolerances", False)]))
@example(blob=edited(INGEST_TEMPLATE, [(("environment", "machine"), "../../results", False)]))
@example(blob=edited(INGEST_TEMPLATE, [(("results", 0, "model"), "a|b\nc", False)]))
@example(blob=edited(INGEST_TEMPLATE, [(("results", 0, "latency_ms_p50"), math.nan, False)]))
def test_ingest_cli_with_malformed_results(blob, tmp_path, capsys):
    check_ingest(blob, tmp_path, capsys)


def check_ingest(blob: bytes, tmp_path: Path, capsys: Any) -> None:
    from lenet_edge.runtime import ingest

    with case_dir(tmp_path) as d:
        src = d / "result.json"
        src.write_bytes(blob)
        devices = d / "devices"
        with nothing_changes(src):
            rc, out, err = call(ingest.main, [src, "--out-dir", devices], capsys)
        written = sorted(p.relative_to(d) for p in d.rglob("*") if p != src)
        if not outcome(rc, err, True, str(src)):
            assert not devices.exists() or not any(devices.iterdir()), written
            return
        doc = json.loads(blob)
        assert _plausible_report(doc), "ingest accepted a result that is not a valid benchmark"
        jsons = [p for p in devices.iterdir() if p.suffix == ".json"]
        assert len(jsons) == 1 and DEVICE_FILE.match(jsons[0].name), written
        assert {p.name for p in devices.iterdir()} == {jsons[0].name, "README.md"}, written
        assert set(written) == {Path("devices"), Path("devices") / jsons[0].name, Path("devices/README.md")}
        assert json.loads(jsons[0].read_text()) == json.loads(blob)
        # every table row has its 10 column separators: no field broke out of its cell
        rows = [ln for ln in (devices / "README.md").read_text().splitlines() if ln.startswith("| ")]
        assert rows and all(ln.count("|") == 10 for ln in rows), rows


# ==== quantize --calibration-file ======================================================================


def _indices_sha(raw: Any) -> str | None:
    from lenet_edge.quantize.calibration import indices_sha256

    try:
        return indices_sha256(np.asarray(raw, dtype=np.int64))
    except (OverflowError, ValueError, TypeError):
        return None


CAL_INDEX = st.one_of(
    st.integers(-5, 70_000),
    st.sampled_from([60_000, 2**31, 2**63, 10**20]),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
)


@st.composite
def calibration_files(draw: Any) -> Blob:
    kind = draw(st.sampled_from(["bytes", "raw", "json", "indices", "indices+sha", "valid"]))
    if kind == "bytes":
        return Blob(draw(st.binary(max_size=40)))
    if kind == "raw":
        return draw(st.sampled_from(RAW_JSON))
    if kind == "json":
        return Blob(dumps(draw(RANDOM_JSON)))
    if kind == "valid":
        idx = sorted(draw(st.sets(st.integers(0, 59_999), min_size=1, max_size=20)))
        return Blob(dumps({"indices": idx, "sha256": _indices_sha(idx)}))
    raw = draw(st.lists(CAL_INDEX, max_size=6))
    doc: dict[str, Any] = {"indices": raw}
    if kind == "indices+sha":
        doc["sha256"] = _indices_sha(raw) if all(isinstance(i, int) for i in raw) else "0" * 64
    return Blob(dumps(doc))


@FUZZ
@given(blob=calibration_files())
@example(blob=dumps({"indices": [1.5]}))
@example(blob=dumps([1, 2]))
def test_quantize_cli_with_malformed_calibration(blob, tmp_path, capsys):
    check_quantize_calibration(blob, tmp_path, capsys)


def check_quantize_calibration(blob: bytes, tmp_path: Path, capsys: Any) -> None:
    import lenet_edge.quantize.__main__ as quantize_main

    with case_dir(tmp_path) as d:
        cal = d / "calibration.json"
        cal.write_bytes(blob)
        onnx_dir, out_dir = d / "onnx", d / "out"
        onnx_dir.mkdir()
        argv = ["--model", "lenet_pool", "--onnx-dir", onnx_dir, "--out-dir", out_dir]
        argv += ["--calibration-file", cal, "--no-progress", "--no-sqnr"]
        with nothing_changes(cal):
            rc, _, err = call(quantize_main.main, argv, capsys)
        # never a success: even a valid subset has no FP32 model to quantize in onnx_dir
        line = one_line_error(rc, err)
        assert str(cal) in line or "FP32 model not found" in line, line
        assert not out_dir.exists() or not any(out_dir.iterdir())
        assert not any(onnx_dir.iterdir())


# ==== regressions: every crash the fuzzing found, one test each ==========================================
# The minimal cases hypothesis printed (hand-reduced where it stopped at the first crash of a test).
# Each must end like any other malformed input: exit 2 and one `error:` line, nothing written.


def _idx_header(ndim: int, dims: list[int]) -> bytes:
    return bytes([0, 0, 0x08, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims)


ZERO_BY_HUGE = _idx_header(3, [0, MAX_U32, MAX_U32])  # 0 images of 4294967295 x 4294967295 pixels
CRASHES: dict[str, tuple[str, Any]] = {
    "read_idx-100-dims": ("read_idx", _idx_header(100, [1] * 100) + b"\x05"),
    "read_idx-0-by-huge-dims": ("read_idx", ZERO_BY_HUGE),
    "load_split-0-by-huge-dims": ("load_split", (ZERO_BY_HUGE, _idx_header(1, [0]))),
    "evaluate-model-fails-in-session-run": ("evaluate", (variant("runtime_reshape_fails"), False)),
    "evaluate-against-model-fails-in-session-run": (
        "evaluate",
        (variant("runtime_gather_out_of_range"), True),
    ),
    "bench-model-fails-in-session-run": ("bench", variant("runtime_reshape_fails")),
    "bundle-file-name-too-long": ("bundle", full_bundle(edits=_edit(("files", "a" * 300), "0" * 64))),
    "bundle-file-name-nul": ("bundle", full_bundle(edits=_edit(("files", "nul\x00byte"), "0" * 64))),
    "bundle-file-name-lone-surrogate": ("bundle", full_bundle(edits=_edit(("files", "\ud800"), "0" * 64))),
    "bundle-atol-huge-int": ("bundle", manifest_only(_edit(("tolerances", "fp32_max_abs_diff"), 10**400))),
    "bundle-inputs-npz-truncated": ("bundle", full_bundle(inputs="truncated")),
    "bundle-inputs-npz-bad-crc": ("bundle", full_bundle(inputs="bad CRC")),
    "bundle-expected-npz-strings": ("bundle", full_bundle(expected="strings")),
    "bundle-expected-npz-empty": ("bundle", full_bundle(expected="empty")),
    "bundle-model-fails-in-session-run": ("bundle", full_bundle(model="runtime_gather_out_of_range")),
    "bundle-manifest-5000-digit-int": ("bundle", random_manifest(RAW_JSON[0])),
    "ingest-latency-huge-int": (
        "ingest",
        edited(INGEST_TEMPLATE, _edit(("results", 0, "latency_ms_p50"), 10**400)),
    ),
    "ingest-ratio-huge-int": (
        "ingest",
        edited(INGEST_TEMPLATE, _edit(("results", 0, "ratio_p50_vs_fp32"), 10**400)),
    ),
    "ingest-machine-lone-surrogate": (
        "ingest",
        edited(INGEST_TEMPLATE, _edit(("environment", "machine"), "\ud800")),
    ),
    "ingest-5000-digit-int": ("ingest", RAW_JSON[0]),
    "quantize-calibration-index-2**63": ("quantize", Blob(dumps({"indices": [2**63]}))),
    "quantize-calibration-5000-digit-int": ("quantize", RAW_JSON[1]),
}


@pytest.mark.parametrize("name", list(CRASHES))
def test_regression_found_by_fuzzing(name, request, tmp_path, capsys):
    entry, case = CRASHES[name]
    if entry == "read_idx":
        check_read_idx(case, tmp_path)
    elif entry == "load_split":
        check_load_split(*case, tmp_path)
    elif entry == "evaluate":
        check_evaluate_model(*case, request.getfixturevalue("mnist_hashes"), tmp_path, capsys)
    elif entry == "bench":
        check_bench_model(case, tmp_path, capsys)
    elif entry == "bundle":
        check_bundle(case, tmp_path, capsys)
    elif entry == "ingest":
        check_ingest(case, tmp_path, capsys)
    else:
        check_quantize_calibration(case, tmp_path, capsys)


# ==== real processes: one representative case per entry point ========================================


def _proc_case(args: list[Any], *needles: str, inputs: tuple[Path, ...] = ()) -> None:
    with nothing_changes(*inputs):
        proc = run_cli(*[str(a) for a in args])
    assert_one_line_error(proc, *needles)


def test_process_evaluate_garbage_model(tmp_path, mnist_dir):
    m = tmp_path / "garbage.onnx"
    m.write_bytes(b"\x00not a model\xff" * 7)
    _proc_case(["-m", "runtime.evaluate", m, "--data-dir", mnist_dir], str(m), inputs=(m,))


def test_process_evaluate_truncated_test_images(tmp_path, mnist_dir):
    from lenet_edge.runtime.mnist import MNIST_FILES

    data = tmp_path / "mnist"
    data.mkdir()
    for name in MNIST_FILES:
        (data / name).symlink_to(mnist_dir / name)
    broken = data / "t10k-images-idx3-ubyte"
    broken.unlink()
    write_idx(broken, np.zeros((3, 28, 28), np.uint8))
    m = tmp_path / "floor.onnx"
    m.write_bytes(FLOOR)
    args = ["-m", "runtime.evaluate", m, "--data-dir", data]
    _proc_case(args, str(broken), "sha256", inputs=(data, m))


def test_process_bench_contract_breaking_model(tmp_path):
    m = tmp_path / "wrong_input.onnx"
    m.write_bytes(MODELS["input_rank2"])
    out = tmp_path / "b" / "b.json"
    _proc_case(["-m", "runtime.bench", m, *_bench_args(out)], "pixels", inputs=(m,))
    assert not out.exists()


def test_process_bundle_manifest_leaving_the_bundle(tmp_path):
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "manifest.json").write_bytes(
        dumps(
            mutate(_bundle_manifest(GOOD_FILES), _edit(("files", "../../results/reference.json"), "0" * 64))
        )
    )
    _proc_case(["-m", "runtime.bundle", "check", b], "leaves the bundle", inputs=(b,))


def test_process_bundle_without_manifest(tmp_path):
    _proc_case(["-m", "runtime.bundle", "check", tmp_path], "no manifest.json", inputs=(tmp_path,))


def test_process_bundle_that_does_not_exist(tmp_path):
    _proc_case(["-m", "runtime.bundle", "check", tmp_path / "nope"], "nope: not found", inputs=(tmp_path,))


def test_process_ingest_path_in_created_unix(tmp_path):
    src = tmp_path / "result.json"
    src.write_bytes(dumps(mutate(INGEST_TEMPLATE, [(("created_unix",), "1/../../tolerances", False)])))
    devices = tmp_path / "devices"
    _proc_case(["-m", "runtime.ingest", src, "--out-dir", devices], "created_unix", inputs=(src,))
    assert not devices.exists() or not any(devices.iterdir())


@pytest.mark.parametrize(
    "blob",
    [b"{not json", dumps({"indices": ["a"]}), dumps({"indices": [1.5]}), dumps([1, 2])],
    ids=["not-json", "string-index", "float-index", "list"],
)
def test_process_quantize_malformed_calibration(tmp_path, blob):
    cal = tmp_path / "calibration.json"
    cal.write_bytes(blob)
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    args = [
        "-m",
        "lenet_edge.quantize",
        "--model",
        "lenet_pool",
        "--onnx-dir",
        onnx_dir,
        "--out-dir",
        tmp_path / "out",
    ]
    _proc_case([*args, "--calibration-file", cal, "--no-progress"], str(cal), inputs=(cal,))
    assert not (tmp_path / "out").exists()


def _garbage_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("conv1.weight.npy", b"\x93NUMPY\x01\x00garbage")
    return buf.getvalue()


def _record(npz: bytes, model: str = "lenet_pool") -> dict[str, Any]:
    return {"model": model, "seed": 0, "checkpoint_sha256": sha256_bytes(npz)}


NAN_NPZ = _npz(**{"conv1.weight": np.full((6, 1, 5, 5), np.nan, np.float32)})
OK_NPZ = _npz(w=np.zeros(3, np.float32))
CHECKPOINTS = {
    # name: (npz bytes, record, what the error line must name)
    "garbage-npz": (_garbage_zip(), _record(_garbage_zip()), "lenet_pool.npz"),
    "nan-weights": (NAN_NPZ, _record(NAN_NPZ), "lenet_pool.npz"),
    "record-is-a-list": (NAN_NPZ, [1, 2], "lenet_pool.train.json"),
    "unknown-model": (OK_NPZ, _record(OK_NPZ, "../../lenet_huge"), "lenet_huge"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINTS))
def test_process_export_malformed_checkpoint(tmp_path, case):
    npz, record, needle = CHECKPOINTS[case]
    d = tmp_path / "ck"
    d.mkdir()
    (d / "lenet_pool.npz").write_bytes(npz)
    (d / "lenet_pool.train.json").write_bytes(dumps(record))
    out = tmp_path / "out"
    args = ["-m", "lenet_edge.export", "--model", "lenet_pool", "--checkpoint-dir", d, "--out-dir", out]
    _proc_case(args, needle, "lenet_pool", inputs=(d,))
    assert not out.exists() or not any(out.iterdir())


# ---- the remaining entry points: a seeded generator of malformed model files, as processes -------


def _malformed_models(seed: int) -> list[bytes]:
    """Random bytes, a truncated real model and a valid model that breaks the contract."""
    from onnx import TensorProto, helper

    from lenet_edge.export.variants import floor_model

    rng = np.random.default_rng(seed)
    floor = floor_model().SerializeToString()
    g = helper.make_graph(
        [helper.make_node("Identity", ["pixels"], ["scores"])],
        "wrong",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1, 28, 28])],
    )
    wrong = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    wrong.ir_version = 8
    return [
        rng.bytes(int(rng.integers(1, 400))),
        floor[: int(rng.integers(5, len(floor) - 1))],
        wrong.SerializeToString(),
    ]


REMAINING = {
    # name: (argv for a folder holding a malformed lenet_pool.fp32.onnx, needle in the error line)
    "optimize": (
        lambda d: ["-m", "lenet_edge.optimize", "--model", "lenet_pool", "--onnx-dir", str(d)],
        "lenet_pool.fp32.onnx",
    ),
    "quantize.tflite": (
        lambda d: ["-m", "lenet_edge.quantize.tflite", "--model", "lenet_pool", "--onnx-dir", str(d)],
        "lenet_pool.fp32.onnx",
    ),
    "quantize.sweep": (
        lambda d: [
            "-m",
            "lenet_edge.quantize.sweep",
            "--model",
            "lenet_pool",
            "--onnx-dir",
            str(d),
            "--json",
            str(d / "s.json"),
        ],
        "lenet_pool.fp32.onnx",
    ),
    "export.variants": (
        lambda d: ["-m", "lenet_edge.export.variants", "--model", "lenet_pool", "--onnx-dir", str(d)],
        "lenet_pool.fp32.onnx",
    ),
    "export.reference": (
        lambda d: ["-m", "lenet_edge.export.reference", "check", "--onnx-dir", str(d)],
        "lenet_pool.fp32",
    ),
    "report.invariance": (
        lambda d: [
            "-m",
            "lenet_edge.report.invariance",
            str(d / "lenet_pool.fp32.onnx"),
            "--json",
            str(d / "inv.json"),
        ],
        "lenet_pool.fp32.onnx",
    ),
    "runtime.profile": (
        lambda d: ["-m", "runtime.profile", str(d / "lenet_pool.fp32.onnx")],
        "lenet_pool.fp32.onnx",
    ),
}


@pytest.mark.parametrize("entry", sorted(REMAINING))
@pytest.mark.parametrize("case", [0, 1, 2], ids=["random-bytes", "truncated", "contract-breaking"])
def test_process_remaining_entry_points_with_malformed_models(entry, case, tmp_path):
    argv, needle = REMAINING[entry]
    d = tmp_path / "onnx"
    d.mkdir()
    model = d / "lenet_pool.fp32.onnx"
    model.write_bytes(_malformed_models(seed=case)[case])
    (d / "lenet_pool.fp32.export.json").write_text(f'{{"onnx_sha256": "{sha256_file(model)}"}}')
    with nothing_changes(model):
        proc = run_cli(*argv(d))
    assert_one_line_error(proc, needle)


def test_process_train_with_a_malformed_idx_folder(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (d / name).write_bytes(np.random.default_rng(len(name)).bytes(64))
    proc = run_cli(
        "-m",
        "lenet_edge.train",
        "--model",
        "lenet_pool",
        "--data-dir",
        str(d),
        "--out-dir",
        str(tmp_path / "out"),
    )
    assert_one_line_error(proc, "train-images-idx3-ubyte")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
