"""SIGTERM to `fedhe simulate` / `fedhe demo` stops its key authority, server and clients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FEDHE = Path(sys.executable).parent / "fedhe"
JOB = """job: {name: long, rounds: 50}
participants: {min_clients: 2, wait_after_min_s: 0.5}
model: {name: mlp, hidden: 16}
"""


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("command", ["simulate", "demo"])
def test_sigterm_stops_every_child(tmp_path: Path, command: str) -> None:
    work = tmp_path / "run"
    args = [str(FEDHE), "demo", "--workdir", str(work)]
    if command == "simulate":
        (tmp_path / "job.yaml").write_text(JOB)
        args = [str(FEDHE), "simulate", str(tmp_path / "job.yaml"), "--clients", "2",
                "--workdir", str(work), "--no-compare"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 90
        while len(children) < 4 and time.monotonic() < deadline:  # keyauth, server, clients
            assert proc.poll() is None, proc.stdout.read()  # type: ignore[union-attr]
            children |= _children(proc.pid)
            time.sleep(0.2)
        assert len(children) >= 4, children
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode()
        survivors = {pid for pid in children if _alive(pid)}
        assert not survivors, f"still running after SIGTERM: {survivors}\n{output}"
        assert proc.returncode == 128 + signal.SIGTERM, output
        assert "Traceback" not in output
    finally:
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
