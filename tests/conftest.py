"""Fixtures for the whole suite: one local Ray for the test session (each start costs seconds), and an S3
bucket on a local S3 server that every Ray process of the session can reach."""

from __future__ import annotations

import pytest

BUCKET = "bert-pretrain-test"


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1: the real S3 protocol that pyarrow (and so Ray Data and Ray Train)
    speaks, standing in for a cloud bucket, which this machine cannot reach. Its endpoint and test keys go
    into the environment before Ray starts, so Ray's processes inherit them."""
    import pyarrow.fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        patch.setenv("AWS_ACCESS_KEY_ID", "test")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        endpoint = {"endpoint_override": f"{host}:{port}", "scheme": "http"}
        pyarrow.fs.S3FileSystem(**endpoint, allow_bucket_creation=True).create_dir(BUCKET)
        yield f"s3://{BUCKET}"
    server.stop()


@pytest.fixture
def bucket(s3_server, request) -> str:
    """A fresh folder of the session's bucket for one test."""
    return f"{s3_server}/{request.node.name}"


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """A new local Ray with 2 CPUs (this machine's size) on 127.0.0.1 for the whole session, whatever other
    Ray runs on the machine."""
    import ray
    from ray.data import DataContext

    from common.local_ray import init_ray

    init_ray(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
