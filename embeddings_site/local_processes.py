"""Processes and ports on this machine, for whatever starts servers of its own: the vLLM worker
launcher, the tests' infrastructure (tests/infra.py) and the benchmarks (bench/).

A free port, waiting for a server to listen, a child that dies with the thread that started it
(Linux's PR_SET_PDEATHSIG, so a parent killed with SIGKILL leaves nothing running), and stopping
process groups: SIGTERM, a grace period, then SIGKILL for whatever of each group is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable

# <linux/prctl.h>: deliver a signal to this process when the thread that forked it exits.
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Return once something accepts connections on 127.0.0.1:port; TimeoutError after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for Popen: the child gets `sig` when its parent dies, even by SIGKILL.

    Linux sends it when the *thread* that started the child ends, so this gives None (no
    preexec_fn) off the main thread, and off Linux. The child's own children are not covered:
    each parent that starts one has to ask for it again.
    """
    if _libc is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    prctl = _libc.prctl  # looked up here: the child, between fork and exec, only calls it

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # A leader that was reaped already may have left members behind in its group (gunicorn's
    # workers, vLLM's engine); a group that is empty answers ProcessLookupError.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def stop_process_groups(processes: Iterable[subprocess.Popen[bytes]], *, grace: float) -> None:
    """SIGTERM the process group of each process (each started with start_new_session=True),
    wait up to `grace` seconds for their leaders, then SIGKILL whatever of the groups is left."""
    processes = list(processes)
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(deadline - time.monotonic(), 0))
    for process in processes:
        _signal_group(process, signal.SIGKILL)  # children that outlived their leader too
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
