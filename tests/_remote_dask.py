"""A Dask deployment whose worker is on "another host", started with Dask's own CLI (for the tests).

- ``python -m dask scheduler --host 127.0.0.1 --port 0`` (a free loopback port, read back from its
  ``--scheduler-file``);
- ``python -m dask worker tcp://127.0.0.1:PORT --nthreads 2 --no-dashboard`` started inside
  ``unshare --uts --mount --propagation private`` (as root; otherwise in a user namespace with
  ``--user --map-root-user``) after ``hostname remote-worker`` and ``mount -t tmpfs tmpfs /tmp``: it has
  its own host name and a private ``/tmp``, so it cannot see the client's files there: it holds only this
  checkout and the interpreter's environment when those live under ``/tmp`` (a CI clone may), bound back
  at the same paths (see ``_private_tmp``). It imports ``procengine_nb`` from this checkout
  (``PYTHONPATH``) and nothing else of the client.
  The deployment's own files (logs, the scheduler file, an exchange directory for tests) are in
  ``/var/tmp``, which both sides see.

Loopback only. Both processes get ``SIGTERM`` when the process that started them dies (``PR_SET_PDEATHSIG``)
and the worker gives up 30 s after losing its scheduler, so nothing outlives a crashed test run.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from threadcheck import DEPLOYMENT_MARK

import procengine_nb

WORKER_HOSTNAME = "remote-worker"
CHECKOUT = str(Path(procengine_nb.__file__).resolve().parents[1])
_PR_SET_PDEATHSIG = 1


class RemoteDaskUnavailable(RuntimeError):
    """This machine cannot start a worker in its own namespaces (no ``unshare``, or not permitted)."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # pragma: no cover - not Linux: the death timeouts still apply
        pass


def unshare_command() -> list[str]:
    """The ``unshare`` prefix for a new UTS and mount namespace; raises :class:`RemoteDaskUnavailable`
    (saying why) when this machine cannot make one."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise RemoteDaskUnavailable("`unshare` (util-linux) is not installed: apt-get install util-linux")
    command = [unshare, "--uts", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        command[1:1] = ["--user", "--map-root-user"]
    probe = subprocess.run([*command, "sh", "-c", "hostname probe && mount -t tmpfs tmpfs /tmp"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        raise RemoteDaskUnavailable(
            f"`{' '.join(command)}` cannot make a new UTS and mount namespace here (run as root, or allow "
            f"unprivileged user namespaces): {probe.stderr.strip()[:300]}"
        )
    return command


@dataclass
class RemoteDask:
    """The running deployment: ``address`` is the scheduler's, ``log()`` the processes' output so far.

    ``directory`` (its logs, and ``exchange/``, where tests and processors may leave each other files)
    is outside ``/tmp``, so the worker sees it too."""

    address: str
    directory: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def exchange(self) -> Path:
        return self.directory / "exchange"

    def log(self) -> str:
        parts = []
        for name in ("scheduler.log", "worker.log"):
            path = self.directory / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop the worker, then the scheduler (SIGTERM, then SIGKILL after 10 s); remove the files."""
        for process in reversed(self.processes):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in reversed(self.processes):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        self.processes.clear()
        shutil.rmtree(self.directory, ignore_errors=True)


def start(nthreads: int = 2, timeout: float = 120.0) -> RemoteDask:
    """Start the scheduler and the worker (see the module docstring); returns once the scheduler
    answers. Raises :class:`RemoteDaskUnavailable` when no namespace can be made."""
    prefix = unshare_command()
    directory = Path(tempfile.mkdtemp(prefix="procengine-remote-dask-", dir=_shared_root()))
    (directory / "exchange").mkdir()
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    env[DEPLOYMENT_MARK] = "remote-dask"  # not counted as a test's child process (threadcheck)
    scheduler_file = directory / "scheduler.json"
    deployment = RemoteDask(address="", directory=directory)
    try:
        with open(directory / "scheduler.log", "wb") as log:
            deployment.processes.append(subprocess.Popen(
                [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                 "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=directory, start_new_session=True,
                preexec_fn=_die_with_parent,
            ))
        deadline = time.monotonic() + timeout
        while True:
            try:
                address = json.loads(scheduler_file.read_text())["address"]
                break
            except (OSError, ValueError, KeyError):
                if deployment.processes[0].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the dask scheduler did not start:\n{deployment.log()}") from None
                time.sleep(0.1)
        deployment.address = address
        worker = [sys.executable, "-m", "dask", "worker", address, "--nthreads", str(nthreads), "--nworkers", "1",
                  "--no-dashboard", "--host", "127.0.0.1", "--death-timeout", "30", "--local-directory", "/tmp"]
        script = (f"hostname {WORKER_HOSTNAME} && {_private_tmp(directory / 'client-tmp')} && cd / && exec "
                  + " ".join(_quote(part) for part in worker))
        with open(directory / "worker.log", "wb") as log:
            deployment.processes.append(subprocess.Popen(
                [*prefix, "sh", "-c", script], stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, preexec_fn=_die_with_parent,
            ))
    except BaseException:
        deployment.stop()
        raise
    return deployment


def _private_tmp(old: Path) -> str:
    """Shell commands (run inside the worker's mount namespace) that give it an empty ``/tmp`` of its own,
    except for this checkout and the interpreter's environment when they live under ``/tmp`` (a CI clone
    may): the code a real worker host would have installed, bound back at the same paths. The client's
    other files under ``/tmp`` (pytest's temporary directories among them) stay out of sight."""
    under_tmp = sorted({p for p in (os.path.realpath(CHECKOUT), os.path.realpath(sys.prefix))
                        if p.startswith("/tmp/")})
    keep = [p for p in under_tmp if not any(p.startswith(q + "/") for q in under_tmp if q != p)]
    if not keep:
        return "mount -t tmpfs tmpfs /tmp"
    old.mkdir()
    steps = [f"mount --bind /tmp {_quote(str(old))}", "mount -t tmpfs tmpfs /tmp"]
    for path in keep:
        steps += [f"mkdir -p {_quote(path)}",
                  f"mount --bind {_quote(str(old) + path[len('/tmp'):])} {_quote(path)}"]
    steps.append(f"umount -l {_quote(str(old))}")  # the rest of the client's /tmp is gone from view
    return " && ".join(steps)


def _shared_root() -> str:
    """A directory outside ``/tmp`` (which the worker does not see) for the deployment's files."""
    for candidate in ("/var/tmp", os.path.expanduser("~")):
        if os.path.isdir(candidate) and os.access(candidate, os.W_OK) and not candidate.startswith("/tmp"):
            return candidate
    raise RemoteDaskUnavailable("no writable directory outside /tmp (/var/tmp or the home directory)")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
