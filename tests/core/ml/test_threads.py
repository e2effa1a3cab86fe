import subprocess
import sys
from pathlib import Path

SCRIPT = """
import os, sys
from core.ml.threads import set_cpu_thread_defaults
set_cpu_thread_defaults()
print(os.environ.get("GOMP_SPINCOUNT"))
"""


def _run(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_short_spin_by_default_and_the_users_setting_wins():
    assert _run({"PATH": ""}) == "1000"
    assert _run({"PATH": "", "GOMP_SPINCOUNT": "5"}) == "5"
    assert _run({"PATH": "", "OMP_WAIT_POLICY": "ACTIVE"}) == "None"


PRIORITY = """
import os
from core.ml.threads import lower_priority
before = os.nice(0)
lower_priority(7)
# empty when the session never had a group of its own (a process tree without setsid, as in some CI runners)
fields = open("/proc/self/autogroup").read().split() if os.path.exists("/proc/self/autogroup") else []
print(os.nice(0) - before, fields[-1] if fields else "-")
"""


def _lower(new_session: bool) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "-c", PRIORITY],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=new_session,
    )
    added, group = out.stdout.split()
    return int(added), group


def test_a_worker_leading_its_session_lowers_its_autogroup_too():
    """With autogroups (Linux), niceness only orders a process within its session's group: a worker in a
    session of its own yields the CPU to the API only through its group's nice value as well."""
    added, group = _lower(new_session=True)
    assert added == 7
    if group != "-":  # a kernel with autogroups (this machine's): the group yields too
        assert group == "7"


def test_a_worker_sharing_its_callers_session_leaves_the_group_alone():
    autogroup = Path("/proc/self/autogroup")
    fields = autogroup.read_text().split() if autogroup.exists() else []
    before = fields[-1] if fields else "-"
    added, group = _lower(new_session=False)
    assert added == 7
    assert group == before  # the group is the caller's (this test run's): not the worker's to lower
