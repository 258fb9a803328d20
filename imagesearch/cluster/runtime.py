"""Joining a Ray cluster, and starting a local one (tests, benchmarks, a laptop without an address).

Local clusters bind to loopback only: Ray would otherwise advertise the host's routable address and a
driver on 127.0.0.1 times out waiting for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import ray
from ray.cluster_utils import Cluster

from imagesearch.settings import ClusterSettings

LOOPBACK = "127.0.0.1"


def connect(config: ClusterSettings) -> None:
    """Join the configured cluster (`address`, else RAY_ADDRESS), else start a local one on loopback."""
    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    options = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        loopback = address.startswith((LOOPBACK, "localhost"))
        ray.init(address=address, **options, **({"_node_ip_address": LOOPBACK} if loopback else {}))
    else:
        ray.init(
            _node_ip_address=LOOPBACK,
            include_dashboard=False,
            object_store_memory=config.local_object_store_mb * 2**20,
            **options,
        )


def worker_label() -> str:
    """'<node id>:<pid>' of the calling process: work records where it ran."""
    return f"{ray.get_runtime_context().get_node_id()[:12]}:{os.getpid()}"


@contextlib.contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 2, object_store_mb: int = 150) -> Iterator[Cluster]:
    """A multi-node Ray cluster on loopback in this machine, for tests and benchmarks; the caller's
    driver is connected to it and disconnected afterwards."""
    node_args = {
        "num_cpus": cpus_per_node,
        "object_store_memory": object_store_mb * 2**20,
        "node_ip_address": LOOPBACK,
        "include_dashboard": False,
    }
    cluster = Cluster(initialize_head=True, head_node_args=node_args)
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**node_args)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, _node_ip_address=LOOPBACK, logging_level=logging.WARNING)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
