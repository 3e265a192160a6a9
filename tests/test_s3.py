"""Slides over a real S3 endpoint (moto server on 127.0.0.1): every backend, staging cache, errors."""

from __future__ import annotations

import numpy as np
import pytest

from wsiscale.config import StorageConfig
from wsiscale.io import EmptySlideError, SlideNotFoundError, StagingCache, open_slide


@pytest.mark.parametrize("backend", ["cucim", "openslide", "tiffslide"])
def test_read_slide_from_s3(s3_bucket, slide_path, tmp_path, backend):
    endpoint, bucket, client = s3_bucket
    client.upload_file(str(slide_path), bucket, "archive/case-1/slide.svs")
    storage = StorageConfig(endpoint_url=endpoint)
    cache = StagingCache(tmp_path / "stage", max_bytes=10 * 2**30)
    uri = f"s3://{bucket}/archive/case-1/slide.svs"
    with open_slide(uri, backend=backend, storage=storage, cache=cache) as remote, open_slide(slide_path, backend=backend) as local:
        assert remote.uri == uri
        assert remote.dimensions == local.dimensions and remote.mpp == (0.5, 0.5)
        a = remote.read_region((2000, 1500), 0, (256, 256))
        b = local.read_region((2000, 1500), 0, (256, 256))
        assert np.array_equal(a, b)
    staged = cache.entries()
    if backend == "tiffslide":
        assert staged == []  # range reads, no copy
    else:
        assert len(staged) == 1 and staged[0].stat().st_size == slide_path.stat().st_size


def test_staging_cache_is_bounded_and_clearable(s3_bucket, slide_path, tmp_path):
    endpoint, bucket, client = s3_bucket
    size = slide_path.stat().st_size
    for i in range(3):
        client.upload_file(str(slide_path), bucket, f"s{i}.svs")
    storage = StorageConfig(endpoint_url=endpoint)
    cache = StagingCache(tmp_path / "stage", max_bytes=int(size * 2.5))
    paths = [cache.fetch(f"s3://{bucket}/s{i}.svs", storage) for i in range(3)]
    assert cache.total_bytes() <= cache.max_bytes
    assert not paths[0].exists() and paths[1].exists() and paths[2].exists()  # least recently used evicted
    again = cache.fetch(f"s3://{bucket}/s2.svs", storage)  # cache hit
    assert again == paths[2]
    cache.clear()
    assert not cache.root.exists()


def test_missing_and_empty_objects(s3_bucket, tmp_path):
    endpoint, bucket, client = s3_bucket
    storage = StorageConfig(endpoint_url=endpoint)
    cache = StagingCache(tmp_path / "stage")
    missing = f"s3://{bucket}/does/not/exist.svs"
    for backend in ("openslide", "tiffslide"):
        with pytest.raises(SlideNotFoundError) as exc:
            open_slide(missing, backend=backend, storage=storage, cache=cache)
        assert missing in str(exc.value)
    client.put_object(Bucket=bucket, Key="zero.svs", Body=b"")
    zero = f"s3://{bucket}/zero.svs"
    with pytest.raises(EmptySlideError) as exc:
        open_slide(zero, storage=storage, cache=cache)
    assert zero in str(exc.value)
    with pytest.raises(EmptySlideError):
        cache.fetch(zero, storage)


def test_credentials_are_refused_in_config():
    with pytest.raises(ValueError, match="must not be stored in configs"):
        StorageConfig(extra={"key": "AKIA...", "secret": "x"})
