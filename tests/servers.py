"""Real servers for the tracking tests: a PostgreSQL cluster and an MLflow tracking server.

Both listen on 127.0.0.1 only and live in throwaway folders under /tmp (not pytest's
tmp_path: the `postgres` user must be able to enter the folder). PostgreSQL refuses
to run as root, so as root its commands run as the `postgres` OS user. SQLAlchemy 2.1
maps a bare `postgresql://` to psycopg 3; the URI names psycopg2, the driver we install.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from conftest import free_port

BIN = Path(sys.executable).parent
PG_ROOT = Path("/usr/lib/postgresql")


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin folder (Debian layout)."""
    found = sorted(PG_ROOT.glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise RuntimeError(f"PostgreSQL is not installed (no {PG_ROOT}/*/bin/initdb); "
                           "`make postgres` installs it from Debian packages")
    return found[-1].parent


def _run(*cmd: str | Path) -> None:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


class Postgres:
    """A throwaway cluster: data and unix socket in a temp folder, TCP on 127.0.0.1, one database."""

    def __init__(self, database: str = "mlflow"):
        self.bin, self.port, self.database = pg_bin(), free_port(), database
        self.dir = Path(tempfile.mkdtemp(prefix="rs_pg", dir="/tmp"))
        self.data = self.dir / "data"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> Postgres:
        if self.as_postgres:
            shutil.chown(self.dir, "postgres")
        _run(*self.as_postgres, self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        _run(*self.as_postgres, self.bin / "pg_ctl", "-D", self.data, "-l", self.dir / "server.log", "-w",
             "-o", options, "start")
        _run(self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database)
        return self

    def stop(self) -> None:
        subprocess.run([*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                        "stop"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a local artifact root; can be killed and started again on its port."""

    def __init__(self, backend_uri: str, workdir: Path, port: int | None = None):
        self.backend_uri, self.workdir = backend_uri, workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 300) -> MlflowServer:
        """Start the server and wait until it answers /health."""
        self.starts += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"server-{self.starts}.log"
        cmd = [BIN / "mlflow", "server", "--backend-store-uri", self.backend_uri,
               "--default-artifact-root", (self.workdir / "artifacts").as_uri(),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        # No job runner (huey consumers): tracking needs none, and they would compete for the CPUs.
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with log.open("w") as out:  # the server keeps its own handle
            self.proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGKILL the server and its workers (its own process group): a crash, as an outage would be."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
