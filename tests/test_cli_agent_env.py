"""``python -m speko_sync.testing agent-env`` (``make agent-env``): one progress
line instead of pip's hundreds; pip's output in a log file shown only when it
fails. pip is a stand-in here (an environment whose Python is a script), so
nothing is downloaded."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

from speko_sync.testing import AGENT_REQUIREMENTS


def fake_env(root: Path, *, exit_code: int) -> Path:
    """An environment whose ``bin/python`` prints like pip (300 lines, its
    arguments first) and exits ``exit_code``."""
    python = root / "bin" / "python"
    python.parent.mkdir(parents=True)
    script = ["#!/bin/sh", 'echo "args: $*"',
              'i=1; while [ $i -le 300 ]; do echo "Collecting package-$i"; i=$((i+1)); done']
    if exit_code:
        script.append('echo "ERROR: no matching distribution" >&2')
    python.write_text("\n".join([*script, f"exit {exit_code}", ""]))
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return python


def agent_env(target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "speko_sync.testing", "agent-env", str(target)],
                          capture_output=True, text=True, timeout=60)


def test_building_prints_one_progress_line_and_where_it_is_ready(tmp_path: Path) -> None:
    python = fake_env(tmp_path / "venv-agent", exit_code=0)
    proc = agent_env(tmp_path / "venv-agent")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    building, ready = proc.stdout.splitlines()
    assert re.fullmatch(r"building the LiveKit Agents environment in \S*venv-agent "
                        r"\(a few minutes the first time\)\.\.\.", building), building
    assert ready == f"agent environment ready: {python}"
    assert not list(Path(tmp_path).glob("*.log"))


def test_a_failure_shows_the_end_of_pips_output_and_where_the_rest_is(tmp_path: Path) -> None:
    fake_env(tmp_path / "venv-agent", exit_code=1)
    proc = agent_env(tmp_path / "venv-agent")
    assert proc.returncode == 1
    assert proc.stdout.startswith("building the LiveKit Agents environment") and len(proc.stdout.splitlines()) == 1
    first, *tail = proc.stderr.splitlines()
    found = re.fullmatch(r"error: building the agent environment failed \(exit 1\); "
                         r"the whole output is in (\S+); its last lines:", first)
    assert found, first
    assert tail[-1] == "  ERROR: no matching distribution" and tail[-2] == "  Collecting package-300"
    assert len(tail) == 20
    log = Path(found.group(1)).read_text()
    assert log.count("Collecting package-") == 300
    assert all(requirement in log.splitlines()[0] for requirement in AGENT_REQUIREMENTS)  # pip install, all of them
    assert "-m pip install" in log.splitlines()[0]
    Path(found.group(1)).unlink()


def test_the_progress_line_names_a_relative_target_as_given(tmp_path: Path) -> None:
    fake_env(tmp_path / ".venv-agent", exit_code=0)
    proc = subprocess.run([sys.executable, "-m", "speko_sync.testing", "agent-env", ".venv-agent"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("building the LiveKit Agents environment in .venv-agent ")


def test_an_environment_whose_python_cannot_run_is_one_error_line(tmp_path: Path) -> None:
    python = fake_env(tmp_path / "venv-agent", exit_code=0)
    python.write_text("not a program\n")  # no #! line: the kernel refuses to run it
    proc = agent_env(tmp_path / "venv-agent")
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: cannot build the agent environment in ") and "Exec format error" in line
