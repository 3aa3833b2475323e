"""Fashion-MNIST (Xiao et al., 2017) from Debian's ``dataset-fashion-mnist`` package (IDX files)."""

from __future__ import annotations

import gzip
import struct
import subprocess
from pathlib import Path

import numpy as np

from fedmtl.config.data import FashionMNISTSource
from fedmtl.data.source import DataError, SourceData
from fedmtl.tasks import Task

INSTALL_HINT = "install it with: sudo apt-get install dataset-fashion-mnist (or set data.source.path to a folder of the IDX files)"
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
# item class -> group: 0 tops (t-shirt, pullover, dress, coat, shirt), 1 bottoms (trouser), 2 footwear & bags
GROUP_OF_ITEM = np.array([0, 1, 0, 0, 0, 2, 0, 2, 2, 2])


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped); a malformed file is a :class:`DataError` naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:  # type: ignore[operator]
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {str(path)!r}: {exc}") from None
    if len(raw) < 4:
        raise DataError(f"IDX file {str(path)!r} is truncated (header)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"IDX file {str(path)!r} has an unsupported header (expected unsigned bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    expected = int(np.prod(dims))
    if body.size != expected:
        raise DataError(f"IDX file {str(path)!r} holds {body.size} values, its header promises {expected}")
    return body.reshape(dims)


def find_fashion_mnist(path: str | None) -> Path:
    """The folder holding the four IDX files: ``path``, or where dpkg installed the package."""
    if path is not None:
        folder = Path(path)
        if not folder.is_dir():
            raise DataError(f"data.source.path {path!r} is not a folder")
        return folder
    try:
        listing = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        listing = None
    if listing is None or listing.returncode != 0:
        raise DataError(f"Fashion-MNIST is not installed; {INSTALL_HINT}")
    for line in listing.stdout.splitlines():
        if Path(line).name.startswith(FILES["train_x"]):
            return Path(line).parent
    raise DataError(f"the dataset-fashion-mnist package lists no {FILES['train_x']} file; {INSTALL_HINT}")


def _file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    raise DataError(f"{stem}(.gz) not found in {str(folder)!r}; {INSTALL_HINT}")


def load_fashion_mnist(cfg: FashionMNISTSource, seed: int) -> SourceData:
    """60k training and 10k test images, 28x28, scaled to [0, 1]; tasks ``item`` and ``group``."""
    folder = find_fashion_mnist(cfg.path)
    arrays = {k: read_idx(_file(folder, v)) for k, v in FILES.items()}
    tx, ty = arrays["train_x"][: cfg.max_train], arrays["train_y"][: cfg.max_train]
    vx, vy = arrays["test_x"][: cfg.max_test], arrays["test_y"][: cfg.max_test]

    def targets(items: np.ndarray) -> dict[str, np.ndarray]:
        table = {"item": items.astype(np.int64), "group": GROUP_OF_ITEM[items].astype(np.int64)}
        return {t: table[t] for t in cfg.tasks}

    all_tasks = {"item": Task("item", "multiclass", 10), "group": Task("group", "multiclass", 3)}
    return SourceData(
        x=(tx.astype(np.float32) / 255.0),
        targets=targets(ty),
        tasks=tuple(all_tasks[t] for t in cfg.tasks),
        holdout_x=(vx.astype(np.float32) / 255.0),
        holdout_targets=targets(vy),
        description=f"Fashion-MNIST, {len(tx)} training images 28x28",
    )
