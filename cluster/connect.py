"""The Ray connection: one local Ray per process by default, or an existing cluster, and its resources."""

from __future__ import annotations

import logging
import os
import socket
import sys

import ray

from cluster.config import ClusterConfig
from workers.quiet import quiet_logger

# Ray turns 127.0.0.1 into the host's network address on Linux; any other loopback address is kept,
# so a local Ray stays on loopback. Elsewhere Ray keeps 127.0.0.1 as it is.
LOCAL_NODE_IP = "127.0.0.2" if sys.platform.startswith("linux") else "127.0.0.1"

_started_here = False  # whether ensure_ray started the local Ray this process uses

# Ray warns at every local start that it turned token authentication on. It is on by Ray's default and
# the Ray is ours, on loopback: nothing for the user to act on, so a local start does not print it.
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def ensure_ray(cfg: ClusterConfig, *, runtime_env: dict | None = None) -> dict:
    """Start or connect Ray once per process (a start costs seconds) and summarise its resources.

    No address in `cfg` and no RAY_ADDRESS (which a submitted job has): a local Ray with
    cfg.num_cpus/num_gpus (None: all). Otherwise connect to cfg.address or RAY_ADDRESS.
    `runtime_env` applies to the Ray this call starts or connects, not to one already running.
    Returns cpus, gpus, nodes, address, and whether this call started the local Ray.
    """
    global _started_here
    started = not ray.is_initialized() and not (cfg.address or os.environ.get("RAY_ADDRESS"))
    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS") or None
        if address is None:
            # address="local": never join a cluster some `ray start` on this machine left behind.
            with quiet_logger(TOKEN_AUTH_LOGGER):
                ray.init(
                    address="local", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, include_dashboard=False,
                    logging_level=logging.WARNING, runtime_env=runtime_env, _node_ip_address=LOCAL_NODE_IP,
                )
            _started_here = True
        else:
            _check_address(address)
            try:
                ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env)
            except (ConnectionError, RuntimeError) as exc:
                raise ConnectionError(f"cannot connect to the Ray cluster at {address}: {_first_line(exc)}") from None
    resources = ray.cluster_resources()
    return {
        "cpus": resources.get("CPU", 0.0),
        "gpus": resources.get("GPU", 0.0),
        "nodes": sum(node["Alive"] for node in ray.nodes()),
        "address": ray.get_runtime_context().gcs_address,
        "started": started,  # this call started the local Ray (shutdown_if_owned stops it)
    }


def shutdown_if_owned() -> None:
    """Stop the local Ray if ensure_ray started it; leave a cluster or someone else's Ray running."""
    global _started_here
    if _started_here and ray.is_initialized():
        ray.shutdown()
    _started_here = False


def trial_resources(cfg: ClusterConfig) -> dict[str, float]:
    """What one Tune trial reserves, in the form tune.with_resources takes."""
    return {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial}


def actor_slots(*, cpus_per_actor: float = 1) -> int:
    """How many cache actors fit the running Ray: one per GPU when there are GPUs, else one per CPU slot."""
    if cpus_per_actor <= 0:
        raise ValueError(f"cpus_per_actor must be positive, got {cpus_per_actor}")
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return gpus
    return max(1, int(resources.get("CPU", 0) // cpus_per_actor))


def check_reachable(host: str, port: int, *, timeout_s: float = 5.0) -> None:
    """Fail fast, with ConnectionError, when nothing listens on host:port (Ray itself retries for minutes)."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach the Ray cluster at {host}:{port}: {exc.strerror or exc}") from None


def check_cluster(cfg: ClusterConfig) -> None:
    """ConnectionError in seconds when the job names a Ray cluster (cluster.address or RAY_ADDRESS) that
    nothing answers at; a local Ray needs no check."""
    if address := cfg.address or os.environ.get("RAY_ADDRESS"):
        _check_address(address)


def _check_address(address: str) -> None:
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if sep and port.isdigit():  # "auto" and the like: Ray resolves them and fails fast itself
        check_reachable(host.strip("[]"), int(port))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
