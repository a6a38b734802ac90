"""S3 over a real HTTP endpoint: moto in server mode as a subprocess, and a fresh bucket per test.

``s3_server`` exports ``AWS_ENDPOINT_URL`` and test credentials into ``os.environ`` for the session,
so boto3 in this process and in every subprocess (Ray workers included) talks to the moto server.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

__all__ = ["S3Server", "s3_bucket", "s3_server"]

_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class S3Server:
    """A running moto server: where it listens and a way to talk to it directly."""

    endpoint_url: str
    port: int
    process: subprocess.Popen[bytes]

    def client(self) -> Any:
        """A boto3 S3 client bound to this server."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


# moto's own CLI only takes a port number (a free port found first could be taken before moto
# binds it, and the readiness probe would then talk to someone else's server). This starts the
# same app with werkzeug on a socket the fixture bound and passes by file descriptor.
_MOTO_ON_FD = """
import os, sys
from werkzeug.serving import make_server
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
fd, port = int(sys.argv[1]), sys.argv[2]
os.environ.setdefault("MOTO_PORT", port)
app = DomainDispatcherApplication(create_backend_app)
server = make_server(
    "127.0.0.1", int(port), app, threaded=True, request_handler=MotoRequestHandler, fd=fd
)
server.serve_forever()
"""


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


def _start_moto(log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start moto on a loopback socket bound here (port 0), so no other process can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        port = int(sock.getsockname()[1])
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", _MOTO_ON_FD, str(sock.fileno()), str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(sock.fileno(),),
            )
    # The socket listens from here on: a probe queues until moto accepts it.
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto exited with {process.returncode}; see {log_path}")
        if _answers(f"http://127.0.0.1:{port}/moto-api/"):
            return process, port
        time.sleep(0.1)
    _stop(process)
    raise RuntimeError(f"moto did not answer within {_START_TIMEOUT_S:.0f}s; see {log_path}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto S3 server over HTTP for the session, with the AWS_* variables pointing at it."""
    workdir = tmp_path_factory.mktemp("moto")
    process, port = _start_moto(workdir / "moto.log")
    endpoint_url = f"http://127.0.0.1:{port}"
    patch = pytest.MonkeyPatch()
    try:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_ENDPOINT_URL", endpoint_url)
        # Keep a developer's own AWS setup (profiles, tokens, config files) out of the tests.
        for name in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_ENDPOINT_URL_S3",
        ):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_CONFIG_FILE", str(workdir / "no-aws-config"))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(workdir / "no-aws-credentials"))
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield S3Server(endpoint_url=endpoint_url, port=port, process=process)
    finally:
        patch.undo()
        _stop(process)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh, uniquely named bucket on the moto server, as ``s3://<bucket>``; emptied after."""
    name = f"detrforge-test-{uuid.uuid4().hex[:16]}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    yield f"s3://{name}"
    # Best effort: a test may have deleted the bucket or its objects itself.
    with contextlib.suppress(ClientError):
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=name):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=name)
