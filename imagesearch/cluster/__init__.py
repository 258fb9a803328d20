"""Ray: the one place the project talks to a cluster. Imported only when `cluster.engine` is 'ray'."""

import os

# Read by Ray when it is first imported (so set before any submodule imports it): no usage reporting,
# and a single-machine cluster stays on loopback instead of advertising the host's routable address,
# where a driver on loopback cannot reach it.
RAY_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
for _name, _value in RAY_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)

from imagesearch.cluster.executor import RayExecutor  # noqa: E402
from imagesearch.cluster.runtime import connect, local_cluster, worker_label  # noqa: E402

__all__ = ["RAY_ENVIRONMENT", "RayExecutor", "connect", "local_cluster", "worker_label"]
