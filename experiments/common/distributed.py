"""Several hosts through JAX's own distributed runtime.

`initialize` wraps `jax.distributed.initialize`: every process runs the same
main job, the round's client axis is sharded over the devices of all
processes (`fed.mesh=auto`), every process computes, and process 0 alone
writes logs, histories, summaries and results (orbax coordinates the
checkpoints itself). With no coordinator address nothing happens (one
process), unless `auto=True` asks JAX to detect a cluster (TPU pod slices,
SLURM, Open MPI, ...).
"""

from __future__ import annotations

import logging
from typing import Optional

import jax

log = logging.getLogger("fedqjax")


def initialize(
  coordinator_address: str = "",
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  auto: bool = False,
) -> bool:
  """Joins the distributed runtime; returns whether it did.

  Args:
    coordinator_address: "host:port" of process 0's coordinator ("" = alone
      unless `auto`).
    num_processes: number of processes (required with an address).
    process_id: this process, 0..num_processes-1 (required with an address).
    auto: call `jax.distributed.initialize()` without arguments (cluster
      auto-detection) when no address is given.

  Raises:
    ValueError: an address without a valid process count / id.
  """
  if not coordinator_address and not auto:
    return False
  if coordinator_address:
    if not (isinstance(num_processes, int) and num_processes >= 1):
      raise ValueError(
        f"--num_processes={num_processes!r} is invalid; "
        "valid: an int >= 1 with --coordinator_address"
      )
    if not (isinstance(process_id, int) and 0 <= process_id < num_processes):
      raise ValueError(
        f"--process_id={process_id!r} is invalid; valid: "
        f"0..{num_processes - 1} (--num_processes - 1)"
      )
  # CPU-only hosts need a cross-process collectives implementation.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address:
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
    )
  else:
    jax.distributed.initialize()
  if jax.process_index() != 0:  # one console: process 0 reports
    log.setLevel(logging.WARNING)
  log.info(
    "distributed: %d processes, %d devices (%d local)",
    jax.process_count(),
    jax.device_count(),
    jax.local_device_count(),
  )
  return True


BARRIER_TIMEOUT_S = 3600


def barrier(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
  """Waits until every process has reached `name` (nothing when alone).

  A barrier of the coordination service (orbax's), not a collective: a CPU
  collective (gloo) gives a peer 30 s to join a new communicator, and two
  processes that compile or evaluate at different speeds (a loaded host, a
  warm compilation cache on one of them) drift further apart than that.
  Called after every phase a process runs on its own before the next
  collective. `name` must be unique within the job.
  """
  if jax.process_count() == 1:
    return
  from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top

  multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)
