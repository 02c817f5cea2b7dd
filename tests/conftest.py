import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from cluster.config import ClusterConfig  # noqa: E402
from cluster.connect import ensure_ray, shutdown_if_owned  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    """One real local Ray per test module (a start costs seconds), bound to loopback only."""
    ensure_ray(ClusterConfig(num_cpus=2))
    yield
    shutdown_if_owned()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads and lose much on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; one test's store must not become the default of
    the drivers the next test starts (a stopped server's URI once failed the Ctrl-C test)."""
    import os

    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
