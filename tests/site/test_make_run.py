"""A fresh checkout: `make run` serves, `createkey` prints a key, the README's curl example works."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from embeddings_site.local_processes import free_port, stop_process_groups
from tests.run_processes import start_process

ROOT = Path(__file__).resolve().parents[2]
README_BLOCK = re.compile(r"<!-- readme-curl-example[^>]*-->\s*```bash\n(.*?)```", re.DOTALL)


def fresh_checkout(destination: Path) -> Path:
    """The files a clone would have: tracked and new-but-not-ignored ones, nothing built."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"make run exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    pytest.fail(f"not ready after {timeout}s:\n{log.read_text()[-4000:]}")


@pytest.mark.e2e
def test_make_run_from_a_fresh_checkout(tmp_path: Path) -> None:
    checkout = fresh_checkout(tmp_path / "checkout")
    assert not (checkout / ".venv").exists()
    port = free_port()
    log = tmp_path / "make-run.log"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("VIRTUAL_ENV", "DJANGO", "DATABASE_URL", "REDIS_URL", "DATA_DIR"))
    }
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if ".venv" not in p)
    env["PORT"] = str(port)
    with log.open("w") as output:
        process = start_process(
            ["make", "run"], cwd=checkout, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process, log, timeout=1200)
        # The install says nothing about the project's own metadata (setuptools printed a
        # deprecation block for a license table on every install).
        assert "SetuptoolsDeprecationWarning" not in log.read_text()
        assert "project.license" not in log.read_text()

        script = README_BLOCK.search((checkout / "README.md").read_text())
        assert script, "README has no curl example block"
        command = script.group(1).replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        body = json.loads(result.stdout)
        assert body["model"] == "all-MiniLM-L6-v2"
        assert [len(item["embedding"]) for item in body["data"]] == [384, 384]
        assert body["usage"]["total_tokens"] > 0

        # createkey on its own: only the key on the last line of stdout.
        created = subprocess.run(
            [".venv/bin/python", "manage.py", "createkey", "--email", "second@example.com"],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        key = created.stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"jina_[0-9A-Za-z]{49}", key)
    finally:
        stop_process_groups([process], grace=30)
