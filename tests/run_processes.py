"""Nothing a test run starts outlives it (issue 18).

Every process the run starts carries RUN_VARIABLE in its environment, set in pytest's own at
configure time, so grandchildren that leave their process group carry it too (vLLM's engine,
gunicorn's workers, the vLLM server a `run_worker` launcher starts in a session of its own).
Its last word is this run's id; a run started inside another (tests/test_run_processes.py)
appends its id to its parent's, so the parent finds what its child run started as well.

- `start_process` starts a server in a session of its own that the run remembers, and that
  Linux sends SIGTERM should pytest die, SIGKILL included (PR_SET_PDEATHSIG).
- SIGTERM and SIGHUP stop the run as Ctrl-C does: a KeyboardInterrupt, so the fixtures stop
  their servers.
- At the end of the session, after the fixtures: the remembered groups still running are
  stopped; then any process still carrying the run's id is named, killed, and fails the run.
- At exit, however pytest gets there, whatever still carries the run's id is killed.
- At the start of a run, processes of runs that ended without any of this (their pytest is gone,
  killed with SIGKILL) are killed and named.

tests/infra.py's hooks call `run_start` (pytest_configure) and `run_finish` (pytest_sessionfinish).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from embeddings_site.local_processes import die_with_parent, stop_process_groups

RUN_VARIABLE = "EMBEDDINGS_TEST_RUN"
# How long processes of the run get to exit by themselves once the fixtures have stopped their
# servers (gunicorn workers whose master is gone, vLLM's engine after its server).
EXIT_GRACE_SECONDS = 15.0


@dataclass(frozen=True)
class RunProcess:
    """A live process that carries run ids in its environment."""

    pid: int
    runs: tuple[str, ...]
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid}: {self.command}"


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from the field after the command name on (state is [0], start time [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def new_run_id() -> str:
    """This process's pid and start time (so that a reused pid is not taken for it) and a nonce."""
    stat = _stat(os.getpid())
    started = stat[19] if stat else "0"
    return f"{os.getpid()}-{started}-{uuid.uuid4().hex[:8]}"


def run_owner(run_id: str) -> int | None:
    """The pid of the pytest that owns `run_id` (None for an id this code did not make)."""
    owner = run_id.split("-")[0]
    return int(owner) if owner.isdigit() else None


def run_is_alive(run_id: str) -> bool:
    """Whether the pytest that owns `run_id` still runs (an id it cannot read counts as alive)."""
    parts = run_id.split("-")
    owner = run_owner(run_id)
    if owner is None or len(parts) != 3:
        return True
    stat = _stat(owner)
    return stat is not None and stat[19] == parts[1] and stat[0] != "Z"


def _marks(entry: Path) -> tuple[str, ...]:
    prefix = f"{RUN_VARIABLE}=".encode()
    try:
        environ = (entry / "environ").read_bytes().split(b"\0")
    except OSError:  # not ours to read
        return ()
    found = [item[len(prefix) :].decode() for item in environ if item.startswith(prefix)]
    return tuple(found[0].split()) if found else ()


def marked_processes() -> list[RunProcess]:
    """Every live process but this one that a test run started: one with RUN_VARIABLE in the
    environment it started with, or a child of a run's pytest or of such a process, however
    deep. (Some programs write their title over their environment, as redis-server does; then
    only their parent says whose they are, and only while it lives.)"""
    table: dict[int, tuple[int, tuple[str, ...], str]] = {}  # pid: parent, marks, command
    for entry in Path("/proc").iterdir():
        stat = _stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is None or stat[0] == "Z":
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        table[int(entry.name)] = (int(stat[1]), _marks(entry), command.strip())
    owned: dict[int, list[str]] = {os.getpid(): os.environ.get(RUN_VARIABLE, RUN_ID).split()}
    for _, marks, _ in table.values():
        for run in marks:
            owner = run_owner(run)
            if owner is not None and run_is_alive(run) and run not in owned.get(owner, []):
                owned.setdefault(owner, []).append(run)
    runs: dict[int, tuple[str, ...]] = {}

    def runs_of(pid: int) -> tuple[str, ...]:
        if pid not in runs:
            runs[pid] = ()  # a loop in a table read while processes come and go
            parent, marks, _ = table.get(pid, (0, (), ""))
            inherited = [*runs_of(parent), *owned.get(parent, [])] if parent > 1 else []
            runs[pid] = tuple(dict.fromkeys([*inherited, *marks]))
        return runs[pid]

    return [
        RunProcess(pid, runs_of(pid), command)
        for pid, (_, _, command) in table.items()
        if pid != os.getpid() and runs_of(pid)
    ]


def processes_of(run_id: str) -> list[RunProcess]:
    """The live processes that `run_id` (or a run started inside it) started."""
    return [process for process in marked_processes() if run_id in process.runs]


def wait_gone(run_id: str, timeout: float) -> list[RunProcess]:
    """Wait up to `timeout` seconds for the processes of `run_id` to exit; those left."""
    deadline = time.monotonic() + timeout
    while (left := processes_of(run_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def kill(processes: list[RunProcess]) -> None:
    for process in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, signal.SIGKILL)


RUN_ID = new_run_id()
_started: list[subprocess.Popen[bytes]] = []


def _run_environ() -> dict[str, str]:
    # SPT_NOENV: setproctitle (vLLM's engine names itself VLLM::EngineCore, gunicorn its
    # processes) otherwise writes the title over the environment /proc/<pid>/environ shows.
    return {RUN_VARIABLE: os.environ[RUN_VARIABLE], "SPT_NOENV": "1"}


def start_process(args: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Popen for a server a test starts: in a session (process group) of its own, stopped at the
    end of the run if its test did not stop it, and sent SIGTERM should pytest die."""
    if popen.get("env") is not None:
        popen["env"] = {**popen["env"], **_run_environ()}
    process = subprocess.Popen(args, start_new_session=True, preexec_fn=die_with_parent(), **popen)
    _started.append(process)
    return process


def environ_outside_the_run() -> dict[str, str]:
    """os.environ without the run's mark, for what a test starts on the machine's behalf and must
    outlive the run (the machine's Postgres cluster)."""
    return {key: value for key, value in os.environ.items() if key != RUN_VARIABLE}


def _stop_started(grace: float) -> None:
    stop_process_groups([p for p in _started if p.poll() is None], grace=grace)
    _started.clear()


_stopping = False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    global _stopping
    if _stopping:  # a second signal must not cut the fixtures' cleanup short
        return
    _stopping = True
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def _kill_at_exit() -> None:
    _stop_started(grace=5)
    kill(processes_of(RUN_ID))


def _report(config: pytest.Config, title: str, processes: list[RunProcess]) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    lines = [title, *(f"  {process}" for process in processes)]
    if reporter is None:
        print("\n".join(lines))
        return
    reporter.write_sep("!", lines[0], red=True)
    for line in lines[1:]:
        reporter.write_line(line)


def run_start(config: pytest.Config) -> None:
    """Mark this run's children, turn SIGTERM into Ctrl-C, and kill what dead runs left."""
    inherited = os.environ.get(RUN_VARIABLE, "")
    os.environ[RUN_VARIABLE] = f"{inherited} {RUN_ID}".strip()
    os.environ.update(_run_environ())
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    atexit.register(_kill_at_exit)
    stale = [p for p in marked_processes() if not all(run_is_alive(run) for run in p.runs)]
    if stale:
        kill(stale)
        _report(config, "killed what earlier test runs left running (their pytest is gone):", stale)


def run_finish(session: pytest.Session) -> None:
    """After the fixtures: stop the servers still running; fail the run if anything else of
    it is left."""
    _stop_started(grace=30)
    survivors = wait_gone(RUN_ID, timeout=EXIT_GRACE_SECONDS)
    if survivors:
        kill(survivors)
        _report(
            session.config,
            f"{len(survivors)} processes this test run started outlived it (killed now):",
            survivors,
        )
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
