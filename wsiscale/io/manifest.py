"""Slide manifests: list a prefix of slides, join labels, read and validate manifests.

A manifest is a table with one row per slide. :func:`build_manifest` writes
one from a listing of a directory or bucket prefix (``file://``, ``s3://``,
``gs://`` or a local path), optionally joined with a labels file;
:func:`read_manifest` reads any manifest (Parquet, or CSV by extension) and
checks it before a run starts, so a bad manifest fails in seconds with a
message naming the file and the fix rather than hours into a job.

Columns written by :func:`build_manifest`: ``uri`` (string, with scheme),
``slide_id`` (string, unique), ``size_bytes`` (int64), then any label
columns. A label column named ``mpp`` is a float64 per-slide resolution
override (um/px).

This module is torch-free (see :mod:`wsiscale.io`).
"""

from __future__ import annotations

import logging
import posixpath
import re
import time
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from wsiscale.io.uri import filesystem, local_path, normalize_uri, read_bytes, write_bytes_atomic

if TYPE_CHECKING:
    from wsiscale.config import StorageConfig

log = logging.getLogger(__name__)

SLIDE_EXTENSIONS: tuple[str, ...] = (
    ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".qptiff", ".dcm",
)
"""File extensions listed as slides (compared case-insensitively)."""

MANIFEST_COLUMNS = ("uri", "slide_id", "size_bytes")
"""Columns :func:`build_manifest` writes before any label columns."""

LABEL_KEYS = ("slide_id", "uri", "filename")
"""Key columns looked for in a labels file, in order, when ``label_key`` is not given."""

_GLOB_CHARS = re.compile(r"[*?\[\]]")
_MAX_LISTED = 20


class ManifestError(ValueError):
    """A manifest, labels file or slide prefix that cannot be used; the message names it and the fix."""


# --------------------------------------------------------------------------------------------- listing


def _has_glob(path: str) -> bool:
    return bool(_GLOB_CHARS.search(path))


@lru_cache(maxsize=64)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a path glob: ``*``/``?``/``[...]`` stay within one path component, ``**`` crosses them."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal '['
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : j]
                negate = body[:1] in ("!", "^")
                if negate:
                    body = body[1:]
                body = body.replace("\\", "\\\\")
                out.append(f"[^/{body}]" if negate else f"[{body}]")
                i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _matches_extension(name: str, extensions: tuple[str, ...]) -> bool:
    if not extensions:
        return True
    lower = name.lower()
    return any(lower.endswith(ext.lower()) for ext in extensions)


def _object_uri(scheme: str, fs: Any, name: str) -> str:
    if scheme == "file":
        return normalize_uri(name)
    if scheme in {"s3", "s3a", "gs", "gcs"}:
        return f"{scheme}://{name.lstrip('/')}"
    return fs.unstrip_protocol(name)


def _describe_extensions(extensions: tuple[str, ...]) -> str:
    return ", ".join(extensions) if extensions else "any extension"


def list_slides(
    prefix: str,
    storage: "StorageConfig | None" = None,
    pattern: str | None = None,
    extensions: tuple[str, ...] = SLIDE_EXTENSIONS,
) -> list[dict]:
    """Slides under ``prefix``, recursively.

    Args:
        prefix: a directory or object-store prefix (``file://``, ``s3://``,
            ``gs://`` or a local path), a single slide, or a glob
            (``* ? [ ]`` and ``**``), e.g. ``s3://bucket/cohort/**/*.svs``. A
            glob matches files, not what is under the directories it matches
            (end it with ``/**`` for that). A prefix that exists literally is
            never treated as a glob.
        storage: object storage options (endpoint, region, anonymous access).
        pattern: an extra glob on the path relative to the prefix root, e.g.
            ``"TCGA-*/*.svs"`` (``*`` stays within one directory, ``**``
            crosses directories).
        extensions: file extensions kept (case-insensitive), also applied to
            glob matches; an empty tuple keeps every file.

    Returns:
        ``{"uri", "size", "relpath"}`` dicts sorted by ``uri``: the full URI
        (absolute ``file://`` for local files), the size in bytes and the
        posix path relative to the prefix root (the part of the prefix before
        any glob character; a single slide's directory). Hidden files and
        zero-byte objects are included (zero-byte slides are reported as
        failures by the pipeline); directories never are.

    Raises:
        ManifestError: the prefix does not exist, cannot be listed, or nothing
            under it matches.
    """
    extensions = tuple(extensions or ())
    uri = normalize_uri(prefix)
    scheme = urlparse(uri).scheme
    fs, path = filesystem(uri, storage)
    t0 = time.perf_counter()
    try:
        if scheme != "file":
            fs.invalidate_cache()  # listings are cached per filesystem instance; see objects written since
        glob = _has_glob(path) and not fs.exists(path)
        if glob:
            parts = path.split("/")
            first = next(i for i, part in enumerate(parts) if _has_glob(part))
            root = "/".join(parts[:first]) or ("/" if path.startswith("/") else "")
            if not root or not fs.exists(root):
                raise ManifestError(
                    f"slide prefix {prefix} does not exist (searched {root or '/'} for the glob); "
                    "check the path, the bucket name and that your credentials can list it"
                )
            found = fs.glob(path, detail=True)
        else:
            root = path
            found = fs.find(path, detail=True)
            if not found:
                if not fs.exists(path):
                    raise ManifestError(
                        f"slide prefix {prefix} does not exist; check the path, the bucket name and that your "
                        "credentials can list it"
                    )
            elif list(found) == [path.rstrip("/")]:  # a single slide
                root = posixpath.dirname(path.rstrip("/"))
    except ManifestError:
        raise
    except (OSError, ValueError) as exc:
        raise ManifestError(
            f"cannot list slide prefix {prefix}: {exc}; check the path, the bucket name and the credentials"
        ) from exc
    root = root.rstrip("/")
    matcher = _glob_regex(pattern) if pattern else None
    files = dirs = 0
    slides: list[dict] = []
    for name, info in found.items():
        if info.get("type") != "file" or name.endswith("/"):
            dirs += 1
            continue
        files += 1
        name = name.rstrip("/")
        rel = name[len(root) :].lstrip("/") if root and name.startswith(root) else name.lstrip("/")
        if not _matches_extension(rel, extensions):
            continue
        if matcher is not None and not matcher.match(rel):
            continue
        slides.append({"uri": _object_uri(scheme, fs, name), "size": int(info.get("size") or 0), "relpath": rel})
    if not slides:
        searched = f"{prefix}" + (f" with pattern {pattern!r}" if pattern else "")
        hint = "check the prefix, the pattern, or pass the extensions of your slides"
        if glob and dirs:
            hint += f"; the glob matched {dirs} director(ies): end it with /** to list what is under them"
        raise ManifestError(
            f"no slides found under {searched}: {files} file(s) listed, none with an extension in "
            f"({_describe_extensions(extensions)}){' that matches the pattern' if pattern else ''}; {hint}"
        )
    slides.sort(key=lambda s: s["uri"])
    log.info("listed %d slides (%d files) under %s in %.1fs", len(slides), files, prefix, time.perf_counter() - t0)
    return slides


# ------------------------------------------------------------------------------------------- slide ids


def _strip_extension(name: str) -> str:
    lower = name.lower()
    for ext in sorted(SLIDE_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    stem, ext = posixpath.splitext(name)
    return stem if stem else name


def slide_ids(relpaths: list[str]) -> list[str]:
    """Unique slide ids for slide paths (relative to a common root, posix).

    The id is the file name without its slide extension
    (``"a/b/TCGA-01.svs"`` -> ``"TCGA-01"``). Ids that collide (compared
    case-insensitively, since outputs named after them may land on a
    case-insensitive filesystem) use the relative path without extension with
    ``/`` replaced by ``__`` (``"a__b__TCGA-01"``); if those still collide,
    the relative path with its extension, and finally a ``-2``, ``-3``...
    suffix in input order. The result has the same order as ``relpaths``.
    """
    paths = [str(p).replace("\\", "/").strip("/") for p in relpaths]

    def candidate(path: str, level: int) -> str:
        if level == 0:
            return _strip_extension(posixpath.basename(path))
        if level == 1:
            return _strip_extension(path).replace("/", "__")
        return path.replace("/", "__")

    levels = [0] * len(paths)
    ids = [candidate(p, 0) for p in paths]
    while True:
        groups: dict[str, list[int]] = {}
        for i, sid in enumerate(ids):
            groups.setdefault(sid.casefold(), []).append(i)
        colliding = [i for members in groups.values() if len(members) > 1 for i in members]
        if not colliding:
            return ids
        movable = [i for i in colliding if levels[i] < 2]
        if not movable:
            break
        for i in movable:
            levels[i] += 1
            ids[i] = candidate(paths[i], levels[i])
    used: set[str] = set()
    out: list[str] = []
    for sid in ids:
        new, k = sid, 2
        while new.casefold() in used:
            new, k = f"{sid}-{k}", k + 1
        used.add(new.casefold())
        out.append(new)
    return out


# ------------------------------------------------------------------------------------------ table I/O


def _read_bytes(uri: str, storage: "StorageConfig | None", what: str) -> bytes:
    try:
        return read_bytes(uri, storage)
    except FileNotFoundError as exc:
        raise ManifestError(f"{what} {uri} does not exist; check the URI") from exc
    except IsADirectoryError as exc:
        raise ManifestError(f"{what} {uri} is a directory; give the path of a Parquet or CSV file") from exc
    except OSError as exc:
        raise ManifestError(f"cannot read {what} {uri}: {exc}; check the URI and the credentials") from exc


def _format_of(uri: str) -> str:
    name = urlparse(normalize_uri(uri)).path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith((".csv", ".txt")):
        return "csv"
    if name.endswith(".tsv"):
        return "tsv"
    return "parquet"


def read_table(
    uri: str, storage: "StorageConfig | None", what: str, string_columns: tuple[str, ...] = ()
) -> pa.Table:
    """A Parquet or CSV/TSV table (by extension; ``.gz`` allowed for text) with ``string_columns`` kept as text."""
    data = _read_bytes(uri, storage, what)
    fmt = _format_of(uri)
    try:
        if fmt == "parquet":
            return pq.read_table(pa.BufferReader(data))
        stream: Any = pa.BufferReader(data)
        if urlparse(normalize_uri(uri)).path.lower().endswith(".gz"):
            stream = pa.CompressedInputStream(stream, "gzip")
        parse = pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")
        convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in string_columns})
        return pacsv.read_csv(stream, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        kind = "Parquet" if fmt == "parquet" else "CSV"
        raise ManifestError(
            f"{what} {uri} is not a valid {kind} file ({exc}); write it as Parquet, or as CSV with a .csv extension"
        ) from exc


def _table_bytes(table: pa.Table, uri: str) -> bytes:
    """``table`` serialised in the format :func:`read_table` reads back from ``uri``."""
    fmt = _format_of(uri)
    sink = pa.BufferOutputStream()
    if fmt == "parquet":
        pq.write_table(table, sink)
    else:
        gz = urlparse(normalize_uri(uri)).path.lower().endswith(".gz")
        stream: Any = pa.CompressedOutputStream(sink, "gzip") if gz else sink
        pacsv.write_csv(table, stream, pacsv.WriteOptions(delimiter="\t" if fmt == "tsv" else ","))
        if gz:
            stream.close()
    return sink.getvalue().to_pybytes()


def _shorten(values: list[Any], limit: int = _MAX_LISTED) -> str:
    text = ", ".join(repr(v) for v in values[:limit])
    return text + (f" ... ({len(values)} in all)" if len(values) > limit else "")


def _replace_column(table: pa.Table, name: str, column: pa.Array | pa.ChunkedArray) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, column)


def _duplicates(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    counts = pc.value_counts(column)
    values, n = counts.field("values"), counts.field("counts")
    return values.filter(pc.greater(n, 1)).to_pylist()


def _check_mpp(table: pa.Table, source: str, ids: list[str] | None = None) -> pa.Table:
    """Cast an ``mpp`` column to float64 and check that every non-null value is a positive finite number."""
    if "mpp" not in table.column_names:
        return table
    column = table.column("mpp")
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = pc.utf8_trim_whitespace(column)
        column = pc.if_else(pc.equal(column, ""), pa.scalar(None, column.type), column)
    try:
        mpp = pc.cast(column, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ManifestError(
            f"{source}: column 'mpp' must hold numbers (um/px) or be empty ({exc}); fix the values or remove the column"
        ) from exc
    valid = pc.and_kleene(pc.is_finite(mpp), pc.greater(mpp, 0.0))
    bad = [i for i, ok in enumerate(valid.to_pylist()) if ok is False]
    if bad:
        values = mpp.to_pylist()
        names = ids if ids is not None else [f"row {i}" for i in range(len(values))]
        listed = ", ".join(f"{names[i]} (mpp={values[i]})" for i in bad[:_MAX_LISTED])
        more = f" ... ({len(bad)} in all)" if len(bad) > _MAX_LISTED else ""
        raise ManifestError(
            f"{source}: mpp must be a positive number of um/px (or empty to read it from the slide); "
            f"bad values for {listed}{more}"
        )
    return _replace_column(table, "mpp", mpp)


# -------------------------------------------------------------------------------------------- labels


def _label_key(labels: pa.Table, label_key: str | None, source: str) -> str:
    columns = labels.column_names
    if label_key is not None:
        if label_key not in columns:
            raise ManifestError(
                f"labels file {source} has no key column {label_key!r}; columns found: {', '.join(columns)}; "
                "pass one of them as the label key"
            )
        return label_key
    for key in LABEL_KEYS:
        if key in columns:
            return key
    raise ManifestError(
        f"labels file {source} has none of the key columns {', '.join(LABEL_KEYS)}; columns found: "
        f"{', '.join(columns)}; rename the key column or pass it as the label key"
    )


def _join_labels(
    manifest: pa.Table,
    relpaths: list[str],
    labels_uri: str,
    label_key: str | None,
    storage: "StorageConfig | None",
) -> tuple[pa.Table, dict]:
    string_columns = tuple(dict.fromkeys(([label_key] if label_key else []) + list(LABEL_KEYS)))
    labels = read_table(labels_uri, storage, "labels file", string_columns=string_columns)
    key = _label_key(labels, label_key, labels_uri)
    # what the key is matched against: uri and filename keys by name, any other key against slide_id
    if key == "uri":
        target = manifest.column("uri").to_pylist()
    elif key == "filename":
        target = [posixpath.basename(r) for r in relpaths]
    else:
        target = manifest.column("slide_id").to_pylist()
    keys = pc.utf8_trim_whitespace(pc.cast(labels.column(key), pa.string()).combine_chunks())
    keep = pc.and_(pc.is_valid(keys), pc.not_equal(pc.fill_null(keys, ""), ""))
    n_empty = len(keys) - (pc.sum(pc.cast(keep, pa.int64())).as_py() or 0)
    if n_empty:
        log.warning("labels file %s: %d row(s) with an empty %r ignored", labels_uri, n_empty, key)
        labels, keys = labels.filter(keep), keys.filter(keep)
    if key == "uri":
        keys = pa.array([normalize_uri(k) for k in keys.to_pylist()], pa.string())
    dups = _duplicates(keys)
    if dups:
        raise ManifestError(
            f"labels file {labels_uri} has duplicate {key!r} values: {_shorten(sorted(dups))}; "
            "keep one row per slide"
        )
    if key == "filename":
        names = pa.array(target, pa.string())
        shared = set(_duplicates(names)) & set(keys.to_pylist())
        if shared:
            raise ManifestError(
                f"labels file {labels_uri} is keyed by filename but {_shorten(sorted(shared))} name more than one "
                "slide; key the labels by slide_id or uri instead"
            )
    target_arr = pa.array(target, pa.string())
    index = pc.index_in(target_arr, value_set=keys)
    labelled = len(index) - index.null_count
    unmatched = keys.filter(pc.invert(pc.is_in(keys, value_set=target_arr))).to_pylist()
    joined = labels.drop_columns([key]).take(index)
    for name in joined.column_names:
        if name in manifest.column_names:
            log.warning("labels file %s: column %r ignored (the manifest's own %r is kept)", labels_uri, name, name)
            continue
        manifest = manifest.append_column(name, joined.column(name))
    stats = {"labelled": labelled, "unmatched_labels": unmatched[:_MAX_LISTED], "n_unmatched_labels": len(unmatched)}
    if unmatched:
        log.warning(
            "labels file %s: %d label row(s) match no slide, e.g. %s",
            labels_uri, len(unmatched), _shorten(unmatched, 5),
        )
    return manifest, stats


# ------------------------------------------------------------------------------------------ manifests


def build_manifest(
    prefix: str,
    out: str | None = None,
    storage: "StorageConfig | None" = None,
    pattern: str | None = None,
    labels: str | None = None,
    label_key: str | None = None,
    extensions: tuple[str, ...] = SLIDE_EXTENSIONS,
) -> tuple[pa.Table, dict]:
    """List the slides under ``prefix``, join labels and write the manifest.

    Args:
        prefix, storage, pattern, extensions: as for :func:`list_slides`.
        out: where to write the manifest (any URI), atomically: Parquet, or CSV
            when it ends in ``.csv``; ``None`` writes nothing.
        labels: a Parquet or CSV (by extension) labels file (any URI) with one
            row per slide and a key column; its other columns are left-joined
            (slides without a label row get nulls). A column named ``mpp`` is
            cast to float64 and used as a per-slide resolution override.
        label_key: the key column; default ``slide_id``, else ``uri``, else
            ``filename``, whichever the labels file has. ``uri`` keys are
            matched against the slide URIs (local paths are normalised),
            ``filename`` keys against the slides' file names, and any other
            key against ``slide_id``.

    Returns:
        ``(table, stats)``: the manifest (columns ``uri``, ``slide_id``,
        ``size_bytes``, then the label columns) and ``{"slides": n,
        "labelled": k, "unmatched_labels": [first 20 label keys that matched
        no slide], "n_unmatched_labels": m}``.

    Raises:
        ManifestError: nothing to list, a labels file without the key column
            or with duplicate keys, or bad ``mpp`` values.
    """
    slides = list_slides(prefix, storage=storage, pattern=pattern, extensions=extensions)
    relpaths = [s["relpath"] for s in slides]
    table = pa.table(
        {
            "uri": pa.array([s["uri"] for s in slides], pa.string()),
            "slide_id": pa.array(slide_ids(relpaths), pa.string()),
            "size_bytes": pa.array([s["size"] for s in slides], pa.int64()),
        }
    )
    stats: dict[str, Any] = {"slides": table.num_rows, "labelled": 0, "unmatched_labels": [], "n_unmatched_labels": 0}
    if labels is not None:
        table, label_stats = _join_labels(table, relpaths, labels, label_key, storage)
        stats.update(label_stats)
        table = _check_mpp(table, f"labels file {labels}", table.column("slide_id").to_pylist())
    empty = pc.sum(pc.cast(pc.equal(table.column("size_bytes"), 0), pa.int64())).as_py() or 0
    if empty:
        log.warning("%d zero-byte slide(s) listed under %s; they will be reported as failures", empty, prefix)
    if out is not None:
        write_bytes_atomic(out, _table_bytes(table, out), storage)
        log.info("wrote manifest of %d slides to %s", table.num_rows, out)
    return table, stats


def _derived_ids(uris: list[str]) -> list[str]:
    """Slide ids from URIs: file names, disambiguated by the path below the URIs' common directory."""
    parts: list[list[str]] = []
    for uri in uris:
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            comps = ["file", *local_path(uri).as_posix().strip("/").split("/")]
        else:
            rest = uri.split("://", 1)[1] if "://" in uri else uri
            comps = [parsed.scheme, *rest.strip("/").split("/")]
        parts.append(comps)
    common = 0
    if parts:
        shortest = min(len(p) for p in parts) - 1  # never the file name itself
        while common < shortest and all(p[common] == parts[0][common] for p in parts):
            common += 1
    return slide_ids(["/".join(p[common:]) for p in parts])


def read_manifest(uri: str, storage: "StorageConfig | None" = None) -> pa.Table:
    """Read and validate a manifest (Parquet, or CSV by extension) from any URI.

    The manifest must have a ``uri`` column; URIs are normalised (local paths
    become ``file://`` URIs). ``slide_id`` is derived from the file names
    with :func:`slide_ids` when absent (inserted after ``uri``); it must be
    unique, non-empty and without ``/``. ``mpp``, when present, is cast to
    float64 (nulls allowed: the slide's own resolution is used). Other columns
    are kept as they are.

    Raises:
        ManifestError: the file is missing or unreadable, has no ``uri``
            column or no rows, empty URIs, empty or duplicate slide ids, or
            non-positive ``mpp`` values; the message names the manifest and
            the rows.
    """
    table = read_table(uri, storage, "manifest", string_columns=("uri", "slide_id"))
    if "uri" not in table.column_names:
        raise ManifestError(
            f"manifest {uri} has no 'uri' column (columns found: {', '.join(table.column_names) or 'none'}); "
            "add a column 'uri' with one slide path or URI per row (`wsiscale manifest` writes one)"
        )
    if table.num_rows == 0:
        raise ManifestError(f"manifest {uri} has no rows; list some slides (`wsiscale manifest PREFIX`)")
    raw = pc.cast(table.column("uri"), pa.string()).to_pylist()
    missing = [i for i, u in enumerate(raw) if u is None or not str(u).strip()]
    if missing:
        raise ManifestError(
            f"manifest {uri}: empty 'uri' in row(s) {_shorten(missing)}; every row needs a slide path or URI"
        )
    uris = [normalize_uri(u.strip()) for u in raw]
    table = _replace_column(table, "uri", pa.array(uris, pa.string()))
    if "slide_id" in table.column_names:
        ids = pc.cast(table.column("slide_id"), pa.string()).to_pylist()
        empty = [uris[i] for i, s in enumerate(ids) if s is None or not s.strip()]
        if empty:
            raise ManifestError(
                f"manifest {uri}: empty slide_id for {_shorten(empty)}; fill them in or drop the slide_id column "
                "to derive ids from the file names"
            )
        table = _replace_column(table, "slide_id", pa.array(ids, pa.string()))
    else:
        same_uri = _duplicates(pa.array(uris, pa.string()))
        if same_uri:
            raise ManifestError(
                f"manifest {uri} lists {_shorten(sorted(same_uri))} more than once; remove the duplicate rows "
                "(or add a slide_id column with distinct ids)"
            )
        ids = _derived_ids(uris)
        table = table.add_column(table.column_names.index("uri") + 1, "slide_id", pa.array(ids, pa.string()))
    slashed = [s for s in ids if "/" in s or "\\" in s]
    if slashed:
        raise ManifestError(
            f"manifest {uri}: slide_id must not contain '/' (outputs are named after it): {_shorten(slashed)}; "
            "replace the slashes, e.g. with '__'"
        )
    dups = _duplicates(pa.array(ids, pa.string()))
    if dups:
        raise ManifestError(
            f"manifest {uri} has duplicate slide_id values: {_shorten(sorted(dups))}; make them unique "
            "(e.g. include the directory, as `wsiscale manifest` does for slides with the same file name)"
        )
    same_uri = _duplicates(pa.array(uris, pa.string()))
    if same_uri:  # distinct ids were given: allowed, but most likely a mistake
        log.warning("manifest %s lists the same slide more than once: %s", uri, _shorten(sorted(same_uri), 5))
    table = _check_mpp(table, f"manifest {uri}", ids)
    log.info("read manifest %s: %d slides", uri, table.num_rows)
    return table
