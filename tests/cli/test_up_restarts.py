"""`jobformer up`'s restart policy and what it says when a child dies (whole `up` runs: tests/integration/test_up.py)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from cli.service import (
    CRASH_LOOP_DEATHS,
    RESTART_DELAY_MAX_SECONDS,
    STABLE_SECONDS,
    _Child,
    _restart_later,
    describe_exit,
    restart_delay,
)
from tests.integration.procs import alive, wait_for


def test_restart_delay_doubles_from_one_second_to_a_minute() -> None:
    assert [restart_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert restart_delay(1000) == RESTART_DELAY_MAX_SECONDS


def test_describe_exit_names_the_signal_and_the_likely_culprit() -> None:
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(-signal.SIGKILL) == (
        "was killed by SIGKILL: most likely the kernel's out-of-memory killer (see `dmesg`), or a kill -9"
    )
    assert describe_exit(-signal.SIGSEGV) == "was killed by SIGSEGV"
    assert describe_exit(-200) == "was killed by signal 200"


@pytest.mark.integration
def test_a_dead_child_leaves_nothing_behind_and_its_error_is_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A child that leaves a process in its group (as a Celery worker leaves the pool child running a job)
    # and exits with an error: the leftover is killed, the end of its log shown, a restart scheduled.
    pid_file = tmp_path / "left.pid"
    script = f"sleep 300 & echo $! > {pid_file}; echo 'no broker at redis://nowhere' >&2; exit 3"
    child = _Child("worker", ["sh", "-c", script], {"PATH": "/usr/bin:/bin"}, tmp_path / "worker.log")
    child.start()
    assert wait_for(lambda: child.exit_status() is not None, "sh to exit") and child.exit_status() == 3
    left = int(pid_file.read_text())
    assert alive(left)

    _restart_later(child, 3)
    wait_for(lambda: not alive(left), "the process it left in its group to be killed")
    assert child.proc is None and child.deaths == 1
    assert child.restart_at - time.monotonic() <= 1.0
    err = capsys.readouterr().err
    assert "worker (pid " in err and ") exited with code 3; the end of its log:" in err
    assert "  | no broker at redis://nowhere" in err
    assert "restarting worker in 1 s (restart 1 in a row)" in err


@pytest.mark.integration
def test_a_crash_loop_backs_off_says_so_and_a_stable_run_resets_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    child = _Child("api", ["sh", "-c", "exit 0"], {"PATH": "/usr/bin:/bin"}, tmp_path / "api.log")
    delays = []
    for _ in range(CRASH_LOOP_DEATHS):
        child.start()  # each dies at once: within STABLE_SECONDS of its start
        wait_for(lambda: child.exit_status() is not None, "sh to exit")
        _restart_later(child, child.exit_status())
        delays.append(round(child.restart_at - time.monotonic()))
    assert delays == [1, 2, 4, 8, 16]
    err = capsys.readouterr().err
    assert "api (pid " in err and ") exited with code 0\n  HTTP requests fail until it is back" in err
    assert f"api keeps dying ({CRASH_LOOP_DEATHS} times in a row, each within 120 s of its start)" in err
    assert "restarting api in 16 s (restart 5 in a row)" in err

    child.start()
    child.started_at -= STABLE_SECONDS  # it ran long enough to count as healthy before it died
    wait_for(lambda: child.exit_status() is not None, "sh to exit")
    _restart_later(child, 0)
    assert child.deaths == 1
    assert "restarting api in 1 s (restart 1 in a row)" in capsys.readouterr().err
