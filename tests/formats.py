"""Writers for small files in official dataset formats, used by the loader tests.

CIFAR-10's batches were pickled by Python 2: protocol 2, dict keys and file names as
Python-2 ``str`` (opcodes SHORT_BINSTRING/BINSTRING), and the image array rebuilt
through ``numpy.core.multiarray._reconstruct`` with its bytes as one more such string.
Python 3's pickler cannot produce that, so the opcodes are emitted by hand here.
"""

from __future__ import annotations

import hashlib
import struct
import tarfile
from pathlib import Path

import numpy as np


class Py2Pickle:
    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2

    def str_(self, value: bytes) -> "Py2Pickle":
        if len(value) < 256:
            self.out += b"U" + bytes([len(value)]) + value  # SHORT_BINSTRING
        else:
            self.out += b"T" + struct.pack("<i", len(value)) + value  # BINSTRING
        return self

    def int_(self, value: int) -> "Py2Pickle":
        if 0 <= value < 256:
            self.out += b"K" + bytes([value])
        elif 0 <= value < 65536:
            self.out += b"M" + struct.pack("<H", value)
        else:
            self.out += b"J" + struct.pack("<i", value)
        return self

    def raw(self, opcodes: bytes) -> "Py2Pickle":
        self.out += opcodes
        return self

    def str_list(self, items: list[bytes]) -> "Py2Pickle":
        self.raw(b"](")  # EMPTY_LIST, MARK
        for item in items:
            self.str_(item)
        return self.raw(b"e")  # APPENDS

    def int_list(self, items: list[int]) -> "Py2Pickle":
        self.raw(b"](")
        for item in items:
            self.int_(int(item))
        return self.raw(b"e")

    def uint8_matrix(self, array: np.ndarray) -> "Py2Pickle":
        rows, cols = array.shape
        self.raw(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n").int_(0).raw(b"\x85").str_(b"b").raw(b"\x87R")
        self.raw(b"(").int_(1).int_(rows).int_(cols).raw(b"\x86")
        self.raw(b"cnumpy\ndtype\n").str_(b"u1").int_(0).int_(1).raw(b"\x87R")
        self.raw(b"(").int_(3).str_(b"|").raw(b"NNN").raw(b"J\xff\xff\xff\xffJ\xff\xff\xff\xff").int_(0).raw(b"tb")
        self.raw(b"\x89").str_(array.astype(np.uint8).tobytes()).raw(b"tb")  # NEWFALSE: C order
        return self

    def done(self) -> bytes:
        return bytes(self.out + b".")


def cifar_batch(labels: list[int], data: np.ndarray, label: str) -> bytes:
    p = Py2Pickle().raw(b"}(")  # EMPTY_DICT, MARK
    p.str_(b"batch_label").str_(label.encode())
    p.str_(b"labels").int_list(labels)
    p.str_(b"data").uint8_matrix(data)
    p.str_(b"filenames").str_list([f"img_{i}.png".encode() for i in range(len(labels))])
    return p.raw(b"u").done()  # SETITEMS


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """A miniature cifar-10-batches-py/ (5 train batches + test batch); returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(per_batch)]
        (folder / name).write_bytes(cifar_batch(labels, data, f"batch {name}"))
        written[name] = data
    meta = Py2Pickle().raw(b"}(").str_(b"num_cases_per_batch").int_(per_batch)
    meta.str_(b"label_names").str_list([c.encode() for c in CIFAR_CLASSES]).str_(b"num_vis").int_(3072)
    (folder / "batches.meta").write_bytes(meta.raw(b"u").done())
    return written


def tar_gz(folder: Path, archive: Path) -> str:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return hashlib.md5(archive.read_bytes()).hexdigest()


def write_tinyimagenet(root: Path, wnids: list[str], per_class_train: int = 3, per_class_val: int = 2) -> Path:
    """A miniature tiny-imagenet-200/ in the official layout, with one grayscale image per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    words = "".join(f"{w}\t{w}-name, other synonym\n" for w in wnids) + "n99999999\tunused class\n"
    (folder / "words.txt").write_text(words)
    for w in wnids:
        images = folder / "train" / w / "images"
        images.mkdir(parents=True)
        boxes = []
        for i in range(per_class_train):
            mode, shape = ("L", (64, 64)) if i == 0 else ("RGB", (64, 64, 3))
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(images / f"{w}_{i}.JPEG")
            boxes.append(f"{w}_{i}.JPEG\t0\t0\t63\t63\n")
        (folder / "train" / w / f"{w}_boxes.txt").write_text("".join(boxes))
    lines = []
    for i in range(per_class_val * len(wnids)):
        w = wnids[i % len(wnids)]
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    (folder / "test" / "images").mkdir(parents=True)
    return folder
