import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lenet_edge.runtime.contract import check_pixels, normalize, to_pixels
from lenet_edge.runtime.errors import CheckpointError, ConfigError, ContractError
from lenet_edge.runtime.files import atomic_path, sha256_file, write_json_atomic

pytestmark = pytest.mark.unit


def test_normalize_maps_pixels_to_unit_range():
    out = normalize(np.array([0, 127.5, 255], dtype=np.float32))
    assert out.dtype == np.float32 and out.tolist() == [-1.0, 0.0, 1.0]


def test_check_pixels_rejects_contract_violations():
    ok = to_pixels(np.zeros((2, 28, 28), np.uint8))
    assert check_pixels(ok) is ok
    camera = ok.astype(np.uint8)  # raw bytes are pixels too
    assert check_pixels(camera) is camera
    with pytest.raises(ContractError, match="dtype must be float32 or uint8"):
        check_pixels(ok.astype(np.float64))
    with pytest.raises(ContractError, match=r"shape must be \[N,1,28,28\]"):
        check_pixels(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(ContractError, match="NaN or Inf"):
        bad = ok.copy()
        bad[0, 0, 0, 0] = np.nan
        check_pixels(bad)
    already_normalised = ok.copy()
    already_normalised[..., 0] = 255
    with pytest.raises(ContractError, match=r"values must lie in 0..255, got -1..1"):
        check_pixels(normalize(already_normalised))  # the common mistake: feeding [-1, 1]


def test_train_config_validates():
    pytest.importorskip("paddle")
    from lenet_edge.train.loop import TrainConfig

    c = TrainConfig("lenet_pool")
    assert c.epochs == 10 and c.batch_size == 64 and c.lr == 1e-3
    with pytest.raises(ConfigError, match="unknown model"):
        TrainConfig(model="resnet")
    with pytest.raises(ConfigError, match="epochs must be 1..1000, got 0"):
        TrainConfig("lenet_pool", epochs=0)
    with pytest.raises(ConfigError, match="seed must be 0..4294967295, got -1"):  # was Paddle's TypeError
        TrainConfig("lenet_pool", seed=-1)
    with pytest.raises(ConfigError, match="lr must be a finite number > 0, got inf"):
        TrainConfig("lenet_pool", lr=float("inf"))
    with pytest.raises(ConfigError, match="limits must be >= 1"):
        TrainConfig("lenet_pool", train_limit=0)


def test_a_training_that_diverges_writes_nothing(tmp_path, mnist_dir):
    """lr 1e12 turns the loss to NaN in the first epoch: training wrote a NaN checkpoint and its
    record and exited 0 (export then refused the checkpoint). Now it stops at that epoch, one
    error naming the model, the loss and the recipe, and nothing is written."""
    pytest.importorskip("paddle")
    from lenet_edge.train.loop import TrainConfig, TrainingError, train

    cfg = TrainConfig("lenet_pool", epochs=3, lr=1e12, train_limit=640, test_limit=64)
    with pytest.raises(
        TrainingError, match=r"lenet_pool: the training loss is nan after epoch 1 \(lr 1e\+12"
    ):
        train(cfg, tmp_path, mnist_dir, progress=False, conv_kernel="paddle")
    assert list(tmp_path.iterdir()) == []


def test_export_config_validates():
    pytest.importorskip("paddle")
    from lenet_edge.export.onnx_export import ExportConfig

    assert ExportConfig().opset == 13
    with pytest.raises(ConfigError, match="opset must be 13..21"):
        ExportConfig(opset=9)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    write_json_atomic(target, {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1} and len(list(tmp_path.iterdir())) == 1


def test_unwritable_output_paths_are_one_error_naming_the_path(tmp_path):
    """An output path is user input: a folder, a file where a folder should be, a place the file
    system refuses — each a LenetEdgeError naming the path; nothing is left behind."""
    from lenet_edge.runtime.errors import LenetEdgeError

    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    cases = {
        tmp_path / "adir": "is a directory",
        tmp_path / "afile" / "sub" / "r.json": "afile is a file, not a folder",
        Path("/proc/lenet-edge-test/r.json"): "cannot write there",
    }
    for path, why in cases.items():
        with pytest.raises(LenetEdgeError, match=why) as e:
            write_json_atomic(path, {"x": 1})
        assert str(path) in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"] and not any(
        (tmp_path / "adir").iterdir()
    )


def test_json_and_markdown_twin_are_written_both_or_neither(tmp_path):
    from lenet_edge.runtime.errors import LenetEdgeError
    from lenet_edge.runtime.files import write_json_and_markdown

    with pytest.raises(LenetEdgeError, match="other than .md"):
        write_json_and_markdown(tmp_path / "r.md", {"x": 1}, "# r")
    (tmp_path / "s.md").mkdir()  # the twin's name is taken by a folder
    with pytest.raises(LenetEdgeError, match="s.md: is a directory"):
        write_json_and_markdown(tmp_path / "s.json", {"x": 1}, "# s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.md"]
    assert write_json_and_markdown(tmp_path / "t.json", {"x": 1}, "# t") == tmp_path / "t.md"
    assert (
        json.loads((tmp_path / "t.json").read_text()) == {"x": 1} and (tmp_path / "t.md").read_text() == "# t"
    )


def test_cli_turns_a_refused_path_into_one_line(tmp_path, capsys):
    from lenet_edge.runtime.cli import run

    def main(argv):
        (tmp_path / "afile").write_text("x")
        (tmp_path / "afile" / "out").mkdir()  # NotADirectoryError, as a --out-dir under a file
        return 0

    assert run(main, []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "afile/out" in err[0]

    def bug(argv):
        raise OSError("no file involved")  # not a path the user gave: stays a traceback

    with pytest.raises(OSError):
        run(bug, [])


class TestCheckpoint:
    @pytest.fixture(autouse=True)
    def _paddle(self):
        pytest.importorskip("paddle")

    def _write(self, tmp_path, state):
        from lenet_edge.train.checkpoint import record_path, write_checkpoint

        p = tmp_path / "m.npz"
        sha = write_checkpoint(p, state)
        write_json_atomic(record_path(p), {"model": "lenet_pool", "seed": 0, "checkpoint_sha256": sha})
        return p

    def test_bytes_are_deterministic_and_load_verified(self, tmp_path):
        from lenet_edge.train.checkpoint import load_checkpoint, npz_bytes

        state = {"b": np.arange(3, dtype=np.float32), "a": np.ones((2, 2), np.float32)}
        assert npz_bytes(state) == npz_bytes(dict(reversed(state.items())))
        p = self._write(tmp_path, state)
        loaded, _ = load_checkpoint(p)
        assert loaded.keys() == state.keys() and all(np.array_equal(loaded[k], state[k]) for k in state)

    def test_tampered_checkpoint_is_refused(self, tmp_path):
        from lenet_edge.train.checkpoint import load_checkpoint

        p = self._write(tmp_path, {"w": np.zeros(4, np.float32)})
        p.write_bytes(p.read_bytes()[:-1] + b"\x01")
        with pytest.raises(CheckpointError, match=r"m.npz: sha256 .* does not match its record"):
            load_checkpoint(p)

    def test_checkpoint_without_record_is_refused(self, tmp_path):
        from lenet_edge.train.checkpoint import load_checkpoint, write_checkpoint

        write_checkpoint(tmp_path / "m.npz", {"w": np.zeros(4, np.float32)})
        with pytest.raises(CheckpointError, match="no training record"):
            load_checkpoint(tmp_path / "m.npz")
        with pytest.raises(CheckpointError, match="not found"):
            load_checkpoint(tmp_path / "other.npz")

    @pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
    def test_non_finite_weights_are_refused(self, tmp_path, bad):
        from lenet_edge.train.checkpoint import load_checkpoint

        w = np.ones((2, 2), np.float32)
        w[1, 1] = bad
        p = self._write(tmp_path, {"w": w})
        with pytest.raises(CheckpointError, match="w holds 1 NaN/Inf"):
            load_checkpoint(p)

    def test_a_record_that_is_not_an_object_is_one_line(self, tmp_path):
        from lenet_edge.train.checkpoint import load_checkpoint, record_path

        p = self._write(tmp_path, {"w": np.ones(2, np.float32)})
        record_path(p).write_text("[1, 2]")
        with pytest.raises(CheckpointError, match="not a training record"):
            load_checkpoint(p)

    def test_pickled_arrays_are_never_loaded(self, tmp_path):
        from lenet_edge.train.checkpoint import load_checkpoint, record_path

        p = tmp_path / "m.npz"
        np.savez(p, w=np.array([{"evil": 1}], dtype=object))  # needs pickle to load
        write_json_atomic(record_path(p), {"model": "lenet_pool", "checkpoint_sha256": sha256_file(p)})
        with pytest.raises(CheckpointError, match="not a readable .npz"):
            load_checkpoint(p)
        assert zipfile.is_zipfile(p)


def test_npz_labels_beyond_int64_are_refused_not_wrapped(tmp_path):
    """A uint64 label of 2**63 passed the checks and became a negative int64 (top-1 0.00 %)."""
    from lenet_edge.runtime.errors import DataError
    from lenet_edge.runtime.mnist import load_split

    p = tmp_path / "d.npz"
    images = np.zeros((2, 28, 28), np.uint8)
    np.savez(p, test_images=images, test_labels=np.array([1, 2**63], np.uint64))
    with pytest.raises(DataError, match="d.npz: test_labels has a label beyond int64"):
        load_split("test", p)
    np.savez(p, test_images=images, test_labels=np.array([1, 2], np.uint64))
    assert load_split("test", p).labels.tolist() == [1, 2]
