"""The README's first screen does what it says: its example runs as written, and its two set-up
commands (install + main job, install + tests) stand at the top, as .ci/run runs the second."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def test_the_usage_example_runs_as_written(capsys):
    example = re.search(r"## Using it\n\n```python\n(.*?)```", _readme(), re.S)
    assert example, "README has no python example under 'Using it'"
    pytest.importorskip("tritoncnn.models")
    exec(compile(example.group(1), "README example", "exec"), {})  # noqa: S102
    printed = capsys.readouterr().out.split("\n")
    assert printed[0] == "True torch.Size([8, 16, 16, 16])"   # what its comments say
    assert printed[1] == "torch.Size([2, 10])"


def test_the_two_setup_commands_come_first_and_ci_runs_the_test_one():
    first = _readme().split("## ", 1)[0]
    commands = re.findall(r"^python3 -m venv .*$", first, re.M)
    assert len(commands) == 2 and commands[0].endswith("tritoncnn train")
    test_command = commands[1].rsplit("&& ", 1)[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command.split()[0] in ci and "-n 2" in ci
    assert "LICENSE" in _readme() and (ROOT / "LICENSE").read_text().startswith("MIT License")
