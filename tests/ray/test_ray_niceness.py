"""The Ray instance a merge starts for itself runs its workers at the driver's priority: Ray's
default (nice 15) starves the merge's tasks whenever anything else runs on the machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHILD = """
import os
from mergestore.merge.ray_executor import connect
ray = connect("local")  # a fresh local instance, as `merge --executor ray` starts one
print(ray.get(ray.remote(lambda: os.nice(0)).remote()), os.nice(0))
ray.shutdown()
"""


@pytest.mark.slow
def test_a_local_instance_runs_workers_at_the_drivers_priority(ray_session) -> None:
    from mergestore.merge.ray_executor import NICENESS_ENV

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", NICENESS_ENV)}
    p = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=300
    )
    assert p.returncode == 0, p.stderr[-2000:]
    worker, driver = map(int, p.stdout.split()[-2:])
    assert worker == driver


def test_a_user_setting_of_worker_niceness_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from mergestore.merge.ray_executor import NICENESS_ENV, worker_priority_env

    monkeypatch.setenv(NICENESS_ENV, "10")
    worker_priority_env()
    assert os.environ[NICENESS_ENV] == "10"
    monkeypatch.delenv(NICENESS_ENV)
    worker_priority_env()
    assert os.environ[NICENESS_ENV] == "0"  # an increment: workers keep the driver's niceness


def test_the_test_sessions_instance_runs_workers_at_the_drivers_priority(ray_session) -> None:
    """The suite's shared instance (tests/ray/conftest.py) is started as `merge` starts one."""
    ray = ray_session
    assert ray.get(ray.remote(lambda: os.nice(0)).remote()) == os.nice(0)
