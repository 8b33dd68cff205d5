"""tests/shards.py, the stand-in for pytest-xdist on machines without it, on a tiny test folder."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

SHARDS = Path(__file__).with_name("shards.py")

TESTS = '''
import os, time
import pytest

@pytest.mark.parametrize("i", range(5))
def test_pass(i):
    assert i >= 0

def test_fail():
    assert os.environ.get("NOT_SET_ANYWHERE") == "x"

@pytest.mark.slow
def test_slow():
    time.sleep(60)
'''


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "test_tiny.py").write_text(TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: sleeps\n")
    return tmp_path


def _run(tmp_path, *args):
    return subprocess.run([sys.executable, str(SHARDS), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_every_test_runs_once_and_a_failure_fails_the_run(tmp_path):
    done = _run(_folder(tmp_path), "3", "-v", "-m", "not slow", "test_tiny.py")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "shards: 6 tests over 3 processes" in out
    shard_lines = "\n".join(ln for ln in out.splitlines() if not ln.startswith("shards:"))
    assert shard_lines.count(" PASSED") == 5 and shard_lines.count(" FAILED") == 1
    assert all(f"test_pass[{i}] PASSED" in out for i in range(5))
    assert "shards: exit statuses [" in out and out.count("test session starts") == 3
    assert "6 of 6 tests reported: 1 failed, 5 passed" in out
    assert out.rstrip().endswith("shards: FAILED test_tiny.py::test_fail")


def test_all_passing_and_nothing_collected(tmp_path):
    _folder(tmp_path)
    ok = _run(tmp_path, "8", "-m", "not slow", "test_tiny.py::test_pass")
    assert ok.returncode == 0 and "5 tests over 5 processes" in ok.stdout  # no empty shards
    none = _run(tmp_path, "2", "-k", "no_such_test", "test_tiny.py")
    assert none.returncode == 5 and "no tests collected" in none.stdout
    assert _run(tmp_path, "0").returncode == 2


def test_stopping_the_run_stops_the_shards_after_passing_on_their_lines(tmp_path):
    proc = subprocess.Popen([sys.executable, str(SHARDS), "2", "-v", "test_tiny.py"],
                            cwd=_folder(tmp_path), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("shards: 7 tests over 2 processes")
    time.sleep(5)  # the shards run their quick tests; one sleeps in test_slow
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    assert proc.wait(timeout=30) == 124 and time.monotonic() - start < 30
    assert "stopped before the shards finished" in out
    assert out.count(" PASSED") >= 1  # what finished before the stop was passed on
