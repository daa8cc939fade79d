"""check-reference means something: the same weights must give the same accuracy, the same CPU class
and versions must give the same weights, and only another CPU class or library version may differ,
within the committed tolerance, with the difference named."""

from __future__ import annotations

import copy
import json

import pytest

from lenet_edge.runtime.errors import LenetEdgeError

pytestmark = pytest.mark.unit

ENV = {"cpu_model": "AMD EPYC", "isa_flags": ["avx", "avx2", "fma", "sse4_1"], "machine": "x86_64"}
VERSIONS = {"python": "3.11.7", "paddle": "3.3.1", "numpy": "2.4.6"}
CONFIG = {"model": "lenet_pool", "seed": 0, "epochs": 10}


def _ref():
    model = {
        "checkpoint_sha256": "a" * 64,
        "training": {"config": CONFIG},
        "fp32": {"test_top1": 0.9871, "test_top2": 0.9972},
    }
    return {
        "training_environment": {**ENV, "versions": VERSIONS},
        "models": {"lenet_pool": model, "lenet_stride": copy.deepcopy(model)},
    }


def _exp(sha="a" * 64, top1=0.9871, top2=0.9972):
    return {"checkpoint_sha256": sha, "test_top1": top1, "test_top2": top2}


def _train(env=None, versions=None, config=None, sha="b" * 64):
    return {
        "checkpoint_sha256": sha,
        "config": config or CONFIG,
        "environment": env or ENV,
        "versions": versions or VERSIONS,
    }


def _cmp(exp, train=None, tol=0.5):
    from lenet_edge.export.reference import compare_model

    return compare_model("lenet_pool", exp, _ref(), train, tol)


def test_the_reference_weights_must_give_identical_accuracy():
    assert _cmp(_exp())[0]
    ok, why = _cmp(_exp(top1=0.9870))
    assert not ok and "must be identical" in why


def test_same_cpu_class_and_versions_must_reproduce_the_weights():
    ok, why = _cmp(_exp(sha="b" * 64), _train())
    assert not ok and "not reproducible" in why


@pytest.mark.parametrize(
    "env,versions,needle",
    [
        ({**ENV, "cpu_model": "Intel(R) Xeon(R) Processor"}, None, "cpu_model"),
        ({**ENV, "isa_flags": [*ENV["isa_flags"], "avx512f"]}, None, "isa_flags"),
        (None, {**VERSIONS, "paddle": "3.4.0"}, "paddle 3.4.0 vs 3.3.1"),
        # trained with the oneDNN kernel against a reference from before the record named it
        (None, {**VERSIONS, "conv_kernel": "oneDNN 3.6.2"}, "conv_kernel oneDNN 3.6.2 vs not recorded"),
    ],
)
def test_another_cpu_class_or_version_is_checked_within_the_tolerance(env, versions, needle):
    train = _train(env=env, versions=versions)
    ok, why = _cmp(_exp(sha="b" * 64, top1=0.9892, top2=0.9975), train)
    assert ok and needle in why and "within ±0.5 pp" in why
    ok, why = _cmp(_exp(sha="b" * 64, top1=0.9800), train)
    assert not ok and "OUTSIDE" in why and needle in why
    ok, _ = _cmp(_exp(sha="b" * 64, top1=float("nan")), train)
    assert not ok  # NaN is a failure, never "within"


def test_unknown_provenance_or_another_config_fails():
    ok, why = _cmp(_exp(sha="b" * 64), None)
    assert not ok and "no training record" in why
    ok, why = _cmp(_exp(sha="b" * 64), _train(config={**CONFIG, "epochs": 2}))
    assert not ok and "epochs" in why


def test_check_exports_exits_non_zero_on_a_failure(tmp_path, monkeypatch, capsys):
    import lenet_edge.export.onnx_export as onnx_export
    import lenet_edge.export.reference as r

    ref = tmp_path / "reference.json"
    ref.write_text(json.dumps(_ref()))
    monkeypatch.setattr(r, "REFERENCE", ref)
    monkeypatch.setattr(r, "ROOT", tmp_path)
    records = {"lenet_pool": _exp(), "lenet_stride": _exp(top1=0.99)}
    monkeypatch.setattr(onnx_export, "read_export_record", lambda p: records[p.name.split(".")[0]])
    with pytest.raises(LenetEdgeError, match="lenet_stride fail"):
        r.check_exports(tmp_path, None)
    out = capsys.readouterr().out
    assert "lenet_pool: ok" in out and "lenet_stride: FAILED" in out
    assert r.check_exports(tmp_path, None, strict=False) == 0  # --no-strict only reports


def test_make_reference_records_one_training_environment():
    from lenet_edge.export.reference import reference_environment

    env = reference_environment([_train(), _train()])
    assert env == {**ENV, "versions": VERSIONS}
    with pytest.raises(LenetEdgeError, match="disagree"):
        reference_environment([_train(), _train(env={**ENV, "cpu_model": "other"})])
    with pytest.raises(LenetEdgeError, match="lack"):
        reference_environment([{"versions": VERSIONS}])


def test_make_reference_re_records_the_committed_checkpoints_in_place(tmp_path, monkeypatch):
    """`make reference TRAIN_DIR=results/checkpoints`: the export and INT8 figures of the committed
    checkpoints are recorded again from the current code; nothing is copied onto itself, and the
    committed training environment stays (those training records predate the field). Training
    records without it from anywhere else are still refused."""
    import lenet_edge.export.reference as r
    from lenet_edge.runtime.files import sha256_file

    ckpts, onnx = tmp_path / "results" / "checkpoints", tmp_path / "onnx"
    ckpts.mkdir(parents=True)
    onnx.mkdir()
    old = _ref()
    for name in ("lenet_pool", "lenet_stride"):
        (ckpts / f"{name}.npz").write_bytes(name.encode())
        sha = sha256_file(ckpts / f"{name}.npz")
        old["models"][name]["checkpoint_sha256"] = sha
        rec = {"checkpoint_sha256": sha, "config": CONFIG, "seconds_per_epoch": 20.0}
        (ckpts / f"{name}.train.json").write_text(json.dumps(rec | {"test_top1": 0.98, "test_top2": 0.99}))
        exp = _exp(sha) | {"params": 1, "onnx_bytes": 252_155, "parity": {"max_abs_logit_diff": 1e-5}}
        exp |= {"data_sha256": "d", "versions": VERSIONS, "onnx_sha256": "o"}
        (onnx / f"{name}.fp32.export.json").write_text(json.dumps(exp))
    reference = tmp_path / "results" / "reference.json"
    reference.write_text(json.dumps(old))
    monkeypatch.setattr(r, "REFERENCE", reference)
    monkeypatch.setattr(r, "REF_CKPT_DIR", ckpts)
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}
    ref = r.write_reference(ckpts, onnx)
    assert ref["training_environment"] == old["training_environment"]
    assert ref["models"]["lenet_pool"]["fp32"]["onnx_bytes"] == 252_155
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before
    other = tmp_path / "train"  # a new training without environment records: refused as before
    other.mkdir()
    for p in ckpts.iterdir():
        (other / p.name).write_bytes(p.read_bytes())
    reference.write_text(json.dumps(_ref()))  # the reference of other checkpoints
    with pytest.raises(LenetEdgeError, match="disagree"):
        r.write_reference(other, onnx)
