"""URIs and filesystems: file://, s3://, gs:// and plain paths through fsspec.

Plain local paths are accepted everywhere and normalised to ``file://``
URIs, so manifests and outputs are unambiguous when they move between
machines. Storage options come from :class:`~wsiscale.config.StorageConfig`
(endpoint, region, anonymous access); credentials come from the
environment, never from configs.
"""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import fsspec

if TYPE_CHECKING:
    from wsiscale.config import StorageConfig

REMOTE_SCHEMES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "http", "https", "memory"}


def normalize_uri(uri: str | os.PathLike) -> str:
    """A URI with a scheme; local paths become absolute ``file://`` URIs."""
    text = os.fspath(uri)
    parsed = urlparse(text)
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        if parsed.scheme == "file":
            return Path(unquote(parsed.path)).resolve().as_uri()
        return text
    return Path(text).expanduser().resolve().as_uri()


def scheme_of(uri: str) -> str:
    return urlparse(normalize_uri(uri)).scheme


def is_local(uri: str) -> bool:
    return scheme_of(uri) == "file"


def local_path(uri: str) -> Path:
    """Filesystem path of a ``file://`` URI."""
    parsed = urlparse(normalize_uri(uri))
    if parsed.scheme != "file":
        raise ValueError(f"{uri} is not a local file:// URI")
    return Path(unquote(parsed.path))


def s3_endpoint(storage: "StorageConfig") -> str | None:
    """The S3-compatible endpoint: ``storage.endpoint_url``, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``."""
    return storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def storage_options(scheme: str, storage: "StorageConfig | None") -> dict[str, Any]:
    """fsspec options for ``scheme`` from the storage config and environment."""
    if storage is None:
        from wsiscale.config import StorageConfig

        storage = StorageConfig()
    opts: dict[str, Any] = dict(storage.extra)
    if scheme in {"s3", "s3a"}:
        endpoint = s3_endpoint(storage)
        client_kwargs = dict(opts.pop("client_kwargs", {}) or {})
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        if storage.region:
            client_kwargs["region_name"] = storage.region
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        if storage.anon:
            opts["anon"] = True
    elif scheme in {"gs", "gcs"} and storage.anon:
        opts["token"] = "anon"
    return opts


def filesystem(uri: str, storage: "StorageConfig | None" = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(filesystem, path within it)`` for ``uri``."""
    uri = normalize_uri(uri)
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return fsspec.filesystem("file"), str(local_path(uri))
    fs, path = fsspec.core.url_to_fs(uri, **storage_options(scheme, storage))
    return fs, path


def join_uri(base: str, *parts: str) -> str:
    """Join path components onto a URI (``file://`` bases are normalised)."""
    base = normalize_uri(base)
    parsed = urlparse(base)
    path = posixpath.join(parsed.path, *parts)
    return parsed._replace(path=path).geturl()


def read_bytes(uri: str, storage: "StorageConfig | None" = None) -> bytes:
    """The whole object at ``uri`` (remote: a fresh read, not a cached listing's older size)."""
    fs, path = filesystem(uri, storage)
    if not is_local(uri):
        fs.invalidate_cache(path)
    with fs.open(path, "rb") as fh:
        return fh.read()


def read_json(uri: str, storage: "StorageConfig | None" = None) -> Any:
    """The JSON document at ``uri``, or None when there is none."""
    try:
        return json.loads(read_bytes(uri, storage))
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_bytes_atomic(uri: str, data: bytes, storage: "StorageConfig | None" = None) -> None:
    """Write ``data`` so that readers see either the old object or the complete new one.

    Local files are written to a temporary sibling and renamed; object stores
    make a single PUT visible atomically.
    """
    uri = normalize_uri(uri)
    if is_local(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return
    fs, path = filesystem(uri, storage)
    fs.pipe_file(path, data)


def ray_storage(uri: str, storage: "StorageConfig | None" = None) -> dict[str, Any]:
    """``RunConfig`` storage arguments (``storage_path`` and, if needed, ``storage_filesystem``) for an output URI.

    Ray Train resolves an ``s3://`` path with pyarrow's defaults (AWS endpoints): with an S3-compatible
    endpoint (``storage.endpoint_url``, MinIO, Ceph, moto), a region or anonymous access configured,
    it gets a native ``pyarrow.fs.S3FileSystem`` built from the same settings and the ``bucket/key``
    path. Credentials still come from the environment or the instance role.
    """
    uri = normalize_uri(uri)
    if is_local(uri):
        return {"storage_path": str(local_path(uri))}
    parsed = urlparse(uri)
    if parsed.scheme in {"s3", "s3a"} and storage is not None:
        endpoint = s3_endpoint(storage)
        if endpoint or storage.region or storage.anon:
            import pyarrow.fs as pafs

            kwargs: dict[str, Any] = {"anonymous": bool(storage.anon)}
            if storage.region:
                kwargs["region"] = storage.region
            if endpoint:
                ep = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
                kwargs |= {"endpoint_override": ep.netloc, "scheme": ep.scheme or "https"}
                kwargs.setdefault("region", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
            return {"storage_path": parsed.netloc + parsed.path, "storage_filesystem": pafs.S3FileSystem(**kwargs)}
    return {"storage_path": uri}
