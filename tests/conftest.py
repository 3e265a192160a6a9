"""Shared fixtures: generated slides (real SVS files), a real S3 endpoint (moto server on 127.0.0.1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ports import free_port

import wsiscale  # noqa: F401  (imports cuCIM before anything imports torch)
from wsiscale.synth.cohort import cached_texture_bank, load_bank
from wsiscale.synth.layout import LayoutParams
from wsiscale.synth.slide import SlideSpec, generate_slide

os.environ.setdefault("WSISCALE_NO_PROGRESS", "1")
# Ray Train on one small machine: the controller polls its workers every 0.2 s instead of 2 s (a fit ends, or
# a killed worker is noticed, that much sooner), and no spot-preemption watcher actor is started per fit
# (no node here is ever drained). Inherited by every Ray the tests start, in process or in subprocesses.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@pytest.fixture(scope="session")
def bank():
    return load_bank(cached_texture_bank(0.5, 512, 3, seed=0), 0.5)


@pytest.fixture(scope="session")
def slides_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slides")


def _make(bank, directory: Path, name: str, **kw) -> Path:
    path = directory / f"{name}.svs"
    if not path.exists():
        layout = kw.pop("layout", LayoutParams())
        spec = SlideSpec(slide_id=name, width=kw.pop("width", 6144), height=kw.pop("height", 5120), layout=layout, **kw)
        generate_slide(spec, bank, path)
    return path


@pytest.fixture(scope="session")
def make_slide(bank, slides_dir):
    """Factory: ``make_slide(name, **SlideSpec fields)`` -> path of a generated SVS (cached per session)."""

    def factory(name: str, **kw) -> Path:
        return _make(bank, slides_dir, name, **kw)

    return factory


@pytest.fixture(scope="session")
def slide_path(make_slide) -> Path:
    """A 6144 x 5120 glandular-tumour slide at 0.5 um/px with pen marks."""
    return make_slide("tumour-pen", label=1, seed=11, layout=LayoutParams(pen_marks=True))


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint (moto server) on 127.0.0.1 with fake credentials in the environment."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_endpoint, request):
    """A fresh bucket on the moto endpoint: ``(endpoint, bucket, boto3 client)``."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    import re
    import uuid

    name = ("wsi-" + re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()))[:48].strip("-") + "-" + uuid.uuid4().hex[:6]
    client.create_bucket(Bucket=name)
    return s3_endpoint, name, client


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """A real local Ray (2 CPUs) shared by the pipeline tests.

    Started after the moto endpoint so workers inherit its (fake) credentials.
    Yields the GCS address (for drivers started in subprocesses).
    """
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    """Six generated 4096 x 4096 slides (two per label) and their manifest: ``(directory, manifest path)``."""
    from wsiscale.config import SynthConfig
    from wsiscale.synth.cohort import build_cohort

    out = tmp_path_factory.mktemp("cohort")
    cfg = SynthConfig(n_slides=6, width=4096, height=4096, seed=3, pen_mark_probability=0.0)
    return out, build_cohort(cfg, out, workers=2)
