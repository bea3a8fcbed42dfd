"""One local Ray instance per test session (`ray.init(num_cpus=2)`, ~8 s), its workers at
the test process's priority (Ray's default nice 15 starves them on a busy machine), as the
instance `merge --executor ray` starts for itself.

Outside CI the Ray tests skip when Ray is not installed; under CI=true they fail, since
.ci/run installs the ray extra and the tests must run there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from ci_gate import unavailable


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    try:
        import ray
    except ImportError:
        unavailable('Ray is not installed (pip install "mergestore[ray]")')
    os.environ.pop("RAY_ADDRESS", None)  # a fresh instance, not a cluster this machine runs
    started = False
    if not ray.is_initialized():
        from mergestore.merge.ray_executor import worker_priority_env

        worker_priority_env()  # workers at this process's priority, as `merge` starts them
        try:
            ray.init(address="local", num_cpus=2, log_to_driver=False, include_dashboard=False)
            started = True
        except Exception as e:  # any start-up failure is the test's failure
            unavailable(f"could not start a local Ray instance: {e}")
    yield ray
    if started:
        ray.shutdown()
