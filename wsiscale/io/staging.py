"""Bounded local cache for remote slides that a reader needs as a file.

cuCIM and OpenSlide open paths, not streams, so ``s3://``/``gs://`` slides are
copied to local disk first. The cache is shared by all processes of a node
(file names are content keys, downloads land by atomic rename, a lock file
serialises eviction), bounded in bytes (least recently used files are evicted,
never the one just fetched) and removable with :meth:`StagingCache.clear`.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from wsiscale.io.errors import EmptySlideError, SlideNotFoundError
from wsiscale.io.uri import filesystem, is_local, local_path, normalize_uri

if TYPE_CHECKING:
    from wsiscale.config import StorageConfig

log = logging.getLogger(__name__)


def default_staging_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"wsiscale-staging-{os.getuid()}"


def object_info(uri: str, storage: "StorageConfig | None" = None) -> dict:
    """fsspec ``info`` of the slide object at ``uri``, checked to be a non-empty file.

    Raises:
        SlideNotFoundError: no such object, a directory, or no permission to see it.
        EmptySlideError: the object has zero bytes.
    """
    fs, path = filesystem(uri, storage)
    try:
        info = fs.info(path)
    except FileNotFoundError as exc:
        raise SlideNotFoundError(uri, "no such file or object", "check the URI and that your credentials can list it") from exc
    except PermissionError as exc:
        raise SlideNotFoundError(uri, f"access denied ({exc})", "check the credentials in the environment") from exc
    if info.get("type") == "directory":
        raise SlideNotFoundError(uri, "is a directory, not a slide", "point at a slide file or list it with `wsiscale manifest`")
    if not info.get("size"):
        raise EmptySlideError(uri, "object has zero bytes", "the slide was not written, copied or uploaded completely; copy it again")
    return info


class StagingCache:
    """Local copies of remote objects, bounded to ``max_bytes``.

    Args:
        root: cache directory (created); defaults to ``$TMPDIR/wsiscale-staging-$UID``.
        max_bytes: total size bound; older files are evicted after each download.
    """

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int = 20 * 2**30) -> None:
        self.root = Path(root) if root else default_staging_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)

    @contextmanager
    def _lock(self):
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _key(self, uri: str, size: int, etag: str) -> Path:
        digest = hashlib.sha256(f"{uri}\0{size}\0{etag}".encode()).hexdigest()[:32]
        suffix = "".join(PurePosixPath(uri).suffixes[-2:])[:16]
        return self.root / f"{digest}{suffix}"

    def fetch(self, uri: str, storage: "StorageConfig | None" = None, info: dict | None = None) -> Path:
        """A local path holding the object at ``uri`` (local files are returned in place).

        Args:
            info: the object's :func:`object_info` when the caller already has it (saves a request).

        Raises:
            SlideNotFoundError, EmptySlideError: the object is missing or has zero bytes.
        """
        uri = normalize_uri(uri)
        info = info if info is not None else object_info(uri, storage)
        if is_local(uri):
            return local_path(uri)
        fs, rpath = filesystem(uri, storage)
        size = int(info["size"])
        etag = str(info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("LastModified") or "")
        target = self._key(uri, size, etag)
        if target.exists() and target.stat().st_size == size:
            os.utime(target)  # mark as recently used
            return target
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=self.root)
        os.close(fd)
        try:
            log.debug("staging %s (%d bytes) to %s", uri, size, target)
            fs.get_file(rpath, tmp_name)
            got = os.path.getsize(tmp_name)
            if got != size:
                raise SlideNotFoundError(uri, f"download incomplete ({got} of {size} bytes)", "retry; the object may be changing")
            os.replace(tmp_name, target)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
        self.evict(keep=target)
        return target

    def entries(self) -> list[Path]:
        return [p for p in self.root.iterdir() if p.is_file() and not p.name.startswith(".")]

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.entries())

    def evict(self, keep: Path | None = None) -> None:
        """Delete least recently used entries until the cache fits ``max_bytes``."""
        with self._lock():
            files = sorted(self.entries(), key=lambda p: p.stat().st_mtime)
            total = sum(p.stat().st_size for p in files)
            for p in files:
                if total <= self.max_bytes:
                    break
                if keep is not None and p == keep:
                    continue
                try:
                    size = p.stat().st_size
                    p.unlink()  # open handles stay valid on POSIX
                    total -= size
                    log.debug("evicted %s from the staging cache", p.name)
                except FileNotFoundError:
                    pass

    def clear(self) -> None:
        """Remove the cache directory and everything in it."""
        shutil.rmtree(self.root, ignore_errors=True)


_DEFAULT: StagingCache | None = None


def default_cache(storage: "StorageConfig | None" = None) -> StagingCache:
    """The process-wide staging cache configured by ``storage.staging_dir/staging_max_gb``."""
    global _DEFAULT
    root = Path(storage.staging_dir) if storage and storage.staging_dir else default_staging_dir()
    max_bytes = int((storage.staging_max_gb if storage else 20.0) * 2**30)
    if _DEFAULT is None or _DEFAULT.root != root or _DEFAULT.max_bytes != max_bytes:
        _DEFAULT = StagingCache(root, max_bytes)
    return _DEFAULT
