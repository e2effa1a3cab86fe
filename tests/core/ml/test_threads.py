import subprocess
import sys

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
