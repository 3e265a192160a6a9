"""Manifests: listing prefixes (local and a real S3 endpoint), slide ids, label joins, validation errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from wsiscale.config import StorageConfig
from wsiscale.io import open_slide
from wsiscale.io.manifest import (
    SLIDE_EXTENSIONS,
    ManifestError,
    build_manifest,
    list_slides,
    read_manifest,
    slide_ids,
)
from wsiscale.io.uri import normalize_uri

# relpath -> size in bytes; the .txt/.json are not slides, "sub/dir.svs" is a directory
TREE = {
    "a.svs": 10,
    "B.SVS": 5,
    ".hidden.tif": 3,
    "notes.txt": 4,
    "sub/c.ndpi": 7,
    "sub/meta.json": 2,
    "sub/deeper/d.tiff": 0,
    "sub/dir.svs/e.mrxs": 4,
    "TCGA-01/x.svs": 1,
    "TCGA-02/y.svs": 2,
}


def make_tree(root: Path, tree: dict[str, int] = TREE) -> Path:
    for rel, size in tree.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    return root


def uri_of(root: Path, rel: str) -> str:
    return normalize_uri(root / rel)


@pytest.fixture()
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "cohort")


def write_csv(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_list_slides_recursive_extensions_hidden_and_empty(tree):
    got = list_slides(str(tree))
    expected = [
        ".hidden.tif", "B.SVS", "TCGA-01/x.svs", "TCGA-02/y.svs", "a.svs", "sub/c.ndpi", "sub/deeper/d.tiff",
        "sub/dir.svs/e.mrxs",
    ]
    assert got == sorted(
        ({"uri": uri_of(tree, r), "size": TREE[r], "relpath": r} for r in expected), key=lambda s: s["uri"]
    )
    assert all(s["uri"].startswith("file:///") for s in got)
    # a file:// prefix with a trailing slash lists the same
    assert list_slides(tree.as_uri() + "/") == got
    # case-insensitive extension filter; the directory named *.svs is never returned
    only_svs = list_slides(str(tree), extensions=(".svs",))
    assert [s["relpath"] for s in only_svs] == ["B.SVS", "TCGA-01/x.svs", "TCGA-02/y.svs", "a.svs"]
    assert [s["relpath"] for s in list_slides(str(tree), extensions=(".NDPI",))] == ["sub/c.ndpi"]
    # a single slide as the prefix
    single = list_slides(str(tree / "sub" / "c.ndpi"))
    assert single == [{"uri": uri_of(tree, "sub/c.ndpi"), "size": 7, "relpath": "c.ndpi"}]
    assert ".svs" in SLIDE_EXTENSIONS and ".dcm" in SLIDE_EXTENSIONS


def test_glob_prefix_and_pattern(tree):
    got = list_slides(f"{tree}/**/*.svs")  # ** matches zero or more directories; globs are case-sensitive
    assert [(s["relpath"], s["size"]) for s in got] == [("TCGA-01/x.svs", 1), ("TCGA-02/y.svs", 2), ("a.svs", 10)]
    got = list_slides(tree.as_uri() + "/sub/*/*.tiff")
    # relpath is relative to the part of the prefix before the first glob character
    assert [(s["uri"], s["relpath"]) for s in got] == [(uri_of(tree, "sub/deeper/d.tiff"), "deeper/d.tiff")]
    # a glob matches files; /** lists what is under the directories it matches
    with pytest.raises(ManifestError, match=r"matched 2 director\(ies\): end it with /\*\*"):
        list_slides(f"{tree}/[sT]*[2b]")
    assert [s["relpath"] for s in list_slides(f"{tree}/[sT]*[2b]/**")] == [
        "TCGA-02/y.svs", "sub/c.ndpi", "sub/deeper/d.tiff", "sub/dir.svs/e.mrxs",
    ]
    # pattern: * stays within a directory, ** crosses them
    assert [s["relpath"] for s in list_slides(str(tree), pattern="TCGA-*/*.svs")] == ["TCGA-01/x.svs", "TCGA-02/y.svs"]
    assert [s["relpath"] for s in list_slides(str(tree), pattern="*.svs")] == ["a.svs"]
    assert [s["relpath"] for s in list_slides(str(tree), pattern="sub/**")] == [
        "sub/c.ndpi", "sub/deeper/d.tiff", "sub/dir.svs/e.mrxs",
    ]
    # a literal directory name with glob characters is not a glob
    odd = make_tree(tree.parent / "odd[1]", {"s.svs": 3})
    assert [s["relpath"] for s in list_slides(str(odd))] == ["s.svs"]


def test_missing_prefix_and_no_match_errors(tree, tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(ManifestError, match="does not exist") as exc:
        list_slides(missing)
    assert missing in str(exc.value)
    with pytest.raises(ManifestError, match="does not exist") as exc:
        list_slides(f"{missing}/**/*.svs")
    assert missing in str(exc.value)
    with pytest.raises(ManifestError) as exc:
        list_slides(str(tree), extensions=(".czi",))
    assert str(tree) in str(exc.value) and ".czi" in str(exc.value) and "10 file(s) listed" in str(exc.value)
    with pytest.raises(ManifestError) as exc:
        list_slides(str(tree), pattern="TCGA-99/*")
    assert "'TCGA-99/*'" in str(exc.value) and ".svs" in str(exc.value)


def test_slide_ids():
    assert slide_ids(["a/b/TCGA-01.svs"]) == ["TCGA-01"]
    assert slide_ids(["a/b/TCGA-01.svs", "c/TCGA-01.svs", "c/TCGA-02.SVS", "q.ome.tiff", "noext"]) == [
        "a__b__TCGA-01", "c__TCGA-01", "TCGA-02", "q.ome", "noext",
    ]
    # same stem, different extension in one directory; and case-insensitive collisions
    assert slide_ids(["a/b.svs", "a/b.tif", "a__b.svs"]) == ["a__b.svs", "a__b.tif", "a__b"]
    assert slide_ids(["x.tif", "X.svs", "y.svs"]) == ["x.tif", "X.svs", "y"]
    assert slide_ids(["s.svs", "s.svs"]) == ["s.svs", "s.svs-2"]
    assert slide_ids([]) == []


def test_build_manifest_disambiguates_and_round_trips(tmp_path, make_slide):
    root = make_tree(tmp_path / "c", {"x/s1.svs": 3, "y/s1.svs": 4, "z/s2.tif": 0})
    real = make_slide("manifest-real", width=2048, height=1536, seed=3)
    shutil.copy(real, root / "z" / "real.svs")
    out = tmp_path / "out" / "manifest.parquet"
    table, stats = build_manifest(str(root), out=str(out))
    assert table.column_names == ["uri", "slide_id", "size_bytes"]
    assert table.schema.field("size_bytes").type == pa.int64()
    assert table.column("slide_id").to_pylist() == ["x__s1", "y__s1", "real", "s2"]
    rels = ("x/s1.svs", "y/s1.svs", "z/real.svs", "z/s2.tif")
    assert table.column("uri").to_pylist() == [uri_of(root, r) for r in rels]
    assert table.column("size_bytes").to_pylist() == [3, 4, real.stat().st_size, 0]
    assert stats == {"slides": 4, "labelled": 0, "unmatched_labels": [], "n_unmatched_labels": 0}
    assert sorted(p.name for p in out.parent.iterdir()) == ["manifest.parquet"]  # no temporary left
    back = read_manifest(str(out))
    assert back.equals(table)
    with open_slide(back.column("uri")[2].as_py()) as slide:
        assert slide.dimensions == (2048, 1536) and slide.mpp == (0.5, 0.5)
    # out=None writes nothing; a .csv out is written as CSV and reads back the same
    assert build_manifest(str(root))[0].equals(table)
    csv_out = tmp_path / "manifest.csv"
    build_manifest(str(root), out=str(csv_out))
    assert csv_out.read_text().splitlines()[0] == '"uri","slide_id","size_bytes"'
    assert read_manifest(str(csv_out)).equals(table)


LABELS_CSV = "slide_id,label,mpp\n001,1,0.25\na,0,\nghost,1,0.5\nghost2,0,\n"


def test_labels_join_from_csv_by_slide_id(tmp_path):
    root = make_tree(tmp_path / "c", {"001.svs": 1, "a.svs": 2, "b/c.svs": 3})
    labels = write_csv(tmp_path / "labels.csv", LABELS_CSV)
    table, stats = build_manifest(str(root), labels=labels, out=str(tmp_path / "m.parquet"))
    assert table.column_names == ["uri", "slide_id", "size_bytes", "label", "mpp"]
    assert table.column("slide_id").to_pylist() == ["001", "a", "c"]  # leading zeros kept: keys are read as text
    assert table.column("label").to_pylist() == [1, 0, None]
    assert table.schema.field("mpp").type == pa.float64()
    assert table.column("mpp").to_pylist() == [0.25, None, None]
    assert stats == {"slides": 3, "labelled": 2, "unmatched_labels": ["ghost", "ghost2"], "n_unmatched_labels": 2}
    back = read_manifest(str(tmp_path / "m.parquet"))
    assert back.equals(table)


def test_labels_join_from_parquet_by_slide_id_and_custom_key(tmp_path):
    root = make_tree(tmp_path / "c", {"p1.svs": 1, "p2.svs": 2, "p3.svs": 3})
    labels = tmp_path / "labels.parquet"
    mpp = pa.array([0.5, None], pa.float32())
    pq.write_table(pa.table({"slide_id": ["p3", "p1"], "grade": ["high", "low"], "mpp": mpp}), labels)
    table, stats = build_manifest(str(root), labels=str(labels))
    assert table.column("grade").to_pylist() == ["low", None, "high"]
    assert table.schema.field("mpp").type == pa.float64() and table.column("mpp").to_pylist() == [None, None, 0.5]
    assert stats == {"slides": 3, "labelled": 2, "unmatched_labels": [], "n_unmatched_labels": 0}
    # any other key column is matched against slide_id
    custom = tmp_path / "custom.parquet"
    pq.write_table(pa.table({"case": ["p2"], "y": [7]}), custom)
    table, stats = build_manifest(str(root), labels=str(custom), label_key="case")
    assert table.column_names == ["uri", "slide_id", "size_bytes", "y"]
    assert table.column("y").to_pylist() == [None, 7, None]
    with pytest.raises(ManifestError) as exc:
        build_manifest(str(root), labels=str(custom), label_key="slide")
    assert "'slide'" in str(exc.value) and "case, y" in str(exc.value)


def test_labels_join_by_filename_and_uri(tmp_path):
    root = make_tree(tmp_path / "c", {"d1/s1.svs": 1, "d2/s2.tif": 2})
    by_name = write_csv(tmp_path / "names.csv", "filename,label\ns2.tif,5\ns1.svs,4\nother.svs,1\n")
    table, stats = build_manifest(str(root), labels=by_name)
    assert table.column_names == ["uri", "slide_id", "size_bytes", "label"]
    assert table.column("label").to_pylist() == [4, 5]
    assert stats["labelled"] == 2 and stats["unmatched_labels"] == ["other.svs"] and stats["n_unmatched_labels"] == 1
    # uri keys: local paths are normalised to file:// URIs before matching
    by_uri = write_csv(tmp_path / "uris.csv", f"uri,label\n{root / 'd2' / 's2.tif'},9\n")
    table, stats = build_manifest(str(root), labels=by_uri)
    assert table.column("label").to_pylist() == [None, 9] and stats["labelled"] == 1
    # a file name shared by two slides is ambiguous as a key
    make_tree(root, {"d3/s1.svs": 1})
    with pytest.raises(ManifestError, match="more than one slide") as exc:
        build_manifest(str(root), labels=by_name)
    assert "'s1.svs'" in str(exc.value)


def test_label_file_errors(tmp_path):
    root = make_tree(tmp_path / "c", {"a.svs": 1, "b.svs": 1})
    dup = write_csv(tmp_path / "dup.csv", "slide_id,label\na,1\nb,0\na,0\nb,1\nz,1\n")
    with pytest.raises(ManifestError, match="duplicate 'slide_id' values: 'a', 'b'") as exc:
        build_manifest(str(root), labels=dup)
    assert "dup.csv" in str(exc.value)
    nokey = write_csv(tmp_path / "nokey.csv", "case,label\na,1\n")
    with pytest.raises(ManifestError) as exc:
        build_manifest(str(root), labels=nokey)
    assert "nokey.csv" in str(exc.value) and "columns found: case, label" in str(exc.value)
    bad_mpp = write_csv(tmp_path / "bad.csv", "slide_id,mpp\na,0.25\nb,-1\n")
    with pytest.raises(ManifestError, match=r"b \(mpp=-1.0\)"):
        build_manifest(str(root), labels=bad_mpp)
    text_mpp = write_csv(tmp_path / "text.csv", "slide_id,mpp\na,0.25\nb,fine\n")
    with pytest.raises(ManifestError, match="column 'mpp' must hold numbers"):
        build_manifest(str(root), labels=text_mpp)
    with pytest.raises(ManifestError, match="does not exist"):
        build_manifest(str(root), labels=str(tmp_path / "absent.csv"))
    out = tmp_path / "never.parquet"
    with pytest.raises(ManifestError):
        build_manifest(str(root), labels=dup, out=str(out))
    assert not out.exists()


def test_read_manifest_csv_derives_ids_and_casts_mpp(tmp_path):
    a, b = tmp_path / "x" / "s.svs", tmp_path / "y" / "s.svs"
    path = write_csv(tmp_path / "m.csv", f"uri,label,mpp\n{a},1,0.25\n{b.as_uri()},0,\n{tmp_path / 't.SVS'},1,0.5\n")
    table = read_manifest(path)
    assert table.column_names == ["uri", "slide_id", "label", "mpp"]
    assert table.column("uri").to_pylist() == [normalize_uri(a), normalize_uri(b), normalize_uri(tmp_path / "t.SVS")]
    # colliding file names are told apart by the path below the URIs' common directory
    assert table.column("slide_id").to_pylist() == ["x__s", "y__s", "t"]
    assert table.schema.field("mpp").type == pa.float64() and table.column("mpp").to_pylist() == [0.25, None, 0.5]
    assert table.column("label").to_pylist() == [1, 0, 1]
    s3 = write_csv(tmp_path / "s3.csv", "uri\ns3://bkt/p/one/a.svs\ns3://bkt/p/two/a.svs\ns3://bkt/p/two/b.tif\n")
    assert read_manifest(s3).column("slide_id").to_pylist() == ["one__a", "two__a", "b"]


def test_read_manifest_errors(tmp_path):
    def manifest(name: str, table: pa.Table) -> str:
        path = tmp_path / name
        pq.write_table(table, path)
        return str(path)

    dup = manifest("dup.parquet", pa.table({"uri": ["/d/a.svs", "/d/b.svs", "/d/c.svs"], "slide_id": ["s", "t", "s"]}))
    with pytest.raises(ManifestError, match="duplicate slide_id values: 's'; make them unique") as exc:
        read_manifest(dup)
    assert "dup.parquet" in str(exc.value)
    derived = manifest("derived.parquet", pa.table({"uri": ["/d/a.svs", "/d/a.svs"]}))
    with pytest.raises(ManifestError, match="lists 'file:///d/a.svs' more than once"):
        read_manifest(derived)  # the same file twice without ids
    bad = manifest("bad.parquet", pa.table({"uri": ["/d/a.svs", "/d/b.svs"], "mpp": [0.5, 0.0]}))
    with pytest.raises(ManifestError, match=r"b \(mpp=0.0\)"):
        read_manifest(bad)
    nan = manifest("nan.parquet", pa.table({"uri": ["/d/a.svs"], "slide_id": ["A1"], "mpp": [float("nan")]}))
    with pytest.raises(ManifestError, match="A1"):
        read_manifest(nan)
    nouri = manifest("nouri.parquet", pa.table({"path": ["/d/a.svs"]}))
    with pytest.raises(ManifestError, match=r"no 'uri' column \(columns found: path\)"):
        read_manifest(nouri)
    empty = manifest("empty.parquet", pa.table({"uri": pa.array([], pa.string())}))
    with pytest.raises(ManifestError, match="has no rows"):
        read_manifest(empty)
    slash = manifest("slash.parquet", pa.table({"uri": ["/d/a.svs"], "slide_id": ["d/a"]}))
    with pytest.raises(ManifestError, match="must not contain '/'"):
        read_manifest(slash)
    blank = tmp_path / "blank.csv"
    pacsv.write_csv(pa.table({"uri": ["/d/a.svs", ""]}), blank)
    with pytest.raises(ManifestError, match=r"empty 'uri' in row\(s\) 1"):
        read_manifest(str(blank))
    with pytest.raises(ManifestError, match="does not exist") as exc:
        read_manifest(str(tmp_path / "absent.parquet"))
    assert "absent.parquet" in str(exc.value)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match="not a valid Parquet file"):
        read_manifest(str(garbage))


def test_build_and_read_manifest_on_s3(s3_bucket, tmp_path):
    endpoint, bucket, client = s3_bucket
    storage = StorageConfig(endpoint_url=endpoint)
    objects = {
        "cohort/a.svs": b"a" * 11,
        "cohort/nested/dir/b.ndpi": b"b" * 5,
        "cohort/zero.svs": b"",
        "cohort/readme.txt": b"hi",
        "other/c.svs": b"c",
    }
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    labels = f"s3://{bucket}/labels.csv"
    client.put_object(Bucket=bucket, Key="labels.csv", Body=b"slide_id,label\nb,1\nzero,0\nmissing,1\n")
    out = f"s3://{bucket}/manifests/manifest.parquet"
    table, stats = build_manifest(f"s3://{bucket}/cohort", out=out, storage=storage, labels=labels)
    expected_uris = [f"s3://{bucket}/cohort/{k}" for k in ("a.svs", "nested/dir/b.ndpi", "zero.svs")]
    assert table.column("uri").to_pylist() == expected_uris
    assert table.column("slide_id").to_pylist() == ["a", "b", "zero"]
    assert table.column("size_bytes").to_pylist() == [11, 5, 0]
    assert table.column("label").to_pylist() == [None, 1, 0]
    assert stats == {"slides": 3, "labelled": 2, "unmatched_labels": ["missing"], "n_unmatched_labels": 1}
    back = read_manifest(out, storage=storage)
    assert back.equals(table)
    def rels(prefix: str) -> list[str]:
        return [s["relpath"] for s in list_slides(f"s3://{bucket}/{prefix}", storage=storage)]

    assert rels("cohort/**/*.ndpi") == ["nested/dir/b.ndpi"]
    assert rels("cohort/*") == ["a.svs", "zero.svs"]
    # objects uploaded after a listing are seen by the next one; an overwritten manifest reads back new
    client.put_object(Bucket=bucket, Key="cohort/new.tif", Body=b"n" * 3)
    assert rels("cohort/*") == ["a.svs", "new.tif", "zero.svs"]
    table2, _ = build_manifest(f"s3://{bucket}/cohort", out=out, storage=storage)
    assert table2.column("slide_id").to_pylist() == ["a", "b", "new", "zero"]
    assert read_manifest(out, storage=storage).column("size_bytes").to_pylist() == [11, 5, 3, 0]
    with pytest.raises(ManifestError, match="does not exist") as exc:
        list_slides(f"s3://{bucket}/nothing-here", storage=storage)
    assert f"s3://{bucket}/nothing-here" in str(exc.value)


def test_manifest_module_is_torch_free(tmp_path):
    code = "import sys, wsiscale.io.manifest; assert 'torch' not in sys.modules, 'torch imported'"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
