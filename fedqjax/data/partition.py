"""Partition a dataset over N clients: iid, Dirichlet(alpha) label skew, shards.

The output is a stacked, padded client dataset (``ClientData``): images
[N, n_max, ...] plus counts [N], so that a jitted round can draw minibatches
for every client by index on device (shapes are fixed across rounds).
References: Hsu et al. 2019 (Dirichlet label skew, arXiv 1909.06335);
McMahan et al. 2017 (label shards, arXiv 1602.05629).
"""

from __future__ import annotations

import dataclasses
from typing import List

import numpy as np

PARTITIONS = ("iid", "dirichlet", "shards")


@dataclasses.dataclass(frozen=True)
class ClientData:
  """Padded per-client data (host numpy arrays).

  Attributes:
    images: [N, n_max, H, W, C]; rows past ``counts[k]`` are padding (copies of
      client k's own samples, never drawn by index-sampling on counts).
    labels: [N, n_max] int32 (padding -1).
    counts: [N] int32, the true number of samples of each client (n_k).
  """

  images: np.ndarray
  labels: np.ndarray
  counts: np.ndarray

  @property
  def num_clients(self) -> int:
    return int(self.counts.shape[0])


def _check(n: int, num_clients: int, min_per_client: int):
  if num_clients < 1:
    raise ValueError(f"num_clients={num_clients} is invalid; valid: >= 1")
  if num_clients * min_per_client > n:
    raise ValueError(
      f"num_clients={num_clients} needs at least {min_per_client} "
      f"sample(s) each but the dataset has only {n}; valid: num_clients <= "
      f"{n // max(min_per_client, 1)}"
    )


def iid(labels: np.ndarray, num_clients: int, seed: int) -> List[np.ndarray]:
  """Uniformly shuffled equal split (sizes differ by at most one)."""
  _check(len(labels), num_clients, 1)
  perm = np.random.default_rng(seed).permutation(len(labels))
  return np.array_split(perm, num_clients)


def dirichlet(
  labels: np.ndarray,
  num_clients: int,
  alpha: float,
  seed: int,
  min_per_client: int = 1,
) -> List[np.ndarray]:
  """Label-skewed split: class c's samples go to clients ~ Dir(alpha).

  Small alpha -> each client sees few classes; large alpha -> close to iid.
  Clients left with fewer than ``min_per_client`` samples take some from the
  largest client, so every client can train.
  """
  if not (np.isfinite(alpha) and alpha > 0):
    raise ValueError(
      f"data.dirichlet_alpha={alpha} is invalid; valid: a finite value > 0"
    )
  _check(len(labels), num_clients, min_per_client)
  rng = np.random.default_rng(seed)
  buckets: List[list] = [[] for _ in range(num_clients)]
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    p = rng.dirichlet(np.full(num_clients, alpha))
    cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
    for k, part in enumerate(np.split(idx, cuts)):
      buckets[k].extend(part.tolist())
  parts = [np.array(b, dtype=np.int64) for b in buckets]
  # Top up starving clients from the largest one (deterministic).
  for k in range(num_clients):
    while len(parts[k]) < min_per_client:
      big = int(np.argmax([len(p) for p in parts]))
      need = min_per_client - len(parts[k])
      take = min(need, len(parts[big]) - min_per_client)
      parts[k] = np.concatenate([parts[k], parts[big][-take:]])
      parts[big] = parts[big][:-take]
  return [rng.permutation(p) for p in parts]


def shards(
  labels: np.ndarray, num_clients: int, labels_per_client: int, seed: int
) -> List[np.ndarray]:
  """McMahan et al. shards: sort by label, cut into num_clients*k shards."""
  if labels_per_client < 1:
    raise ValueError(f"data.labels_per_client={labels_per_client} must be >= 1")
  num_shards = num_clients * labels_per_client
  _check(len(labels), num_shards, 1)
  rng = np.random.default_rng(seed)
  order = np.argsort(labels, kind="stable")
  pieces = np.array_split(order, num_shards)
  assign = rng.permutation(num_shards).reshape(num_clients, labels_per_client)
  return [
    rng.permutation(np.concatenate([pieces[s] for s in row])) for row in assign
  ]


def split_indices(
  labels: np.ndarray,
  num_clients: int,
  method: str = "iid",
  *,
  seed: int = 0,
  alpha: float = 0.5,
  labels_per_client: int = 2,
) -> List[np.ndarray]:
  """Index lists, one per client, by ``method`` in ``PARTITIONS``."""
  labels = np.asarray(labels)
  if method == "iid":
    return iid(labels, num_clients, seed)
  if method == "dirichlet":
    return dirichlet(labels, num_clients, alpha, seed)
  if method == "shards":
    return shards(labels, num_clients, labels_per_client, seed)
  raise ValueError(f"data.partition={method!r} is invalid; valid: {PARTITIONS}")


def stack_clients(
  images: np.ndarray,
  labels: np.ndarray,
  parts: List[np.ndarray],
  n_max: int | None = None,
) -> ClientData:
  """Stacks per-client index lists into padded arrays [N, n_max, ...].

  Args:
    n_max: cap on samples per client (clients with more are truncated; the
      count records what is kept). Default: the largest client.
  """
  counts = np.array([len(p) for p in parts], np.int64)
  if n_max is None:
    n_max = int(counts.max())
  counts = np.minimum(counts, n_max)
  # Padding rows repeat the client's own first samples (wrap-around), so even
  # an accidental read of a padding row sees that client's data.
  idx = np.stack(
    [
      np.resize(p[:n_max], n_max) if len(p) else np.zeros(n_max, np.int64)
      for p in parts
    ]
  )
  valid = np.arange(n_max)[None, :] < counts[:, None]
  lab = np.where(valid, labels[idx], -1).astype(np.int32)
  return ClientData(
    images=images[idx], labels=lab, counts=counts.astype(np.int32)
  )


def partition(
  images: np.ndarray,
  labels: np.ndarray,
  num_clients: int,
  method: str = "iid",
  *,
  seed: int = 0,
  alpha: float = 0.5,
  labels_per_client: int = 2,
  n_max: int | None = None,
) -> ClientData:
  """Splits (images, labels) over ``num_clients`` and stacks them padded."""
  if len(images) != len(labels):
    raise ValueError(
      f"images ({len(images)}) and labels ({len(labels)}) differ in length"
    )
  parts = split_indices(
    labels,
    num_clients,
    method,
    seed=seed,
    alpha=alpha,
    labels_per_client=labels_per_client,
  )
  return stack_clients(images, labels, parts, n_max)
