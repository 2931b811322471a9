"""Downloads that resume, verify a checksum, and never leave a bad file in place."""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from superlens.errors import UserError

CHUNK = 1 << 20


def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def check_digest(path: Path, expected: str, algorithm: str = "md5") -> None:
    """Raise a UserError unless ``path``'s digest starts with ``expected``."""
    actual = file_digest(path, algorithm)
    if not actual.startswith(expected):
        raise UserError(
            f"{path} has the wrong {algorithm} checksum ({actual}, expected {expected}): "
            "the file is corrupt or truncated; delete it and download it again"
        )


def download(url: str, dest: str | os.PathLike, digest: str, algorithm: str = "md5", progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` unless a file with the right checksum is already there.

    The bytes go to ``dest + '.part'`` first; an interrupted download resumes from it
    with an HTTP Range request. Only a file whose checksum matches is renamed onto
    ``dest``; a mismatching one is deleted.
    """
    dest = Path(dest)
    if dest.exists():
        check_digest(dest, digest, algorithm)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if start and response.status != 206:
                start = 0  # the server ignored the range: start over
            total = response.length + start if response.length is not None else None
            bar = _progress_bar(total, start, dest.name, progress)
            with open(part, "ab" if start else "wb") as f:
                for block in iter(lambda: response.read(CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
            bar.close()
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(
            f"could not download {url} ({exc}); check the network, or place the file at {dest} yourself"
        ) from None
    if file_digest(part, algorithm).startswith(digest):
        os.replace(part, dest)
        return dest
    part.unlink()
    raise UserError(f"the download of {url} has the wrong {algorithm} checksum and was deleted; try again")


def _progress_bar(total, initial, name, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name, disable=not enabled)


def extract(archive: Path, into: Path) -> None:
    """Unpack a .tar.gz or .zip archive; a truncated or damaged one is a UserError."""
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
                if bad is not None:
                    raise zipfile.BadZipFile(f"member {bad} is damaged")
                zf.extractall(into)
        else:
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(into, filter="data")
                else:  # Python releases before the extraction filters
                    tf.extractall(into)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise UserError(
            f"{archive} could not be unpacked ({exc}): it is truncated or damaged; delete it and download it again"
        ) from None
