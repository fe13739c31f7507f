"""The robustness margin: the back-off that keeps deadline misses rare.

Planning on a noisy or stale estimate (`fedqjax.energy.channel`) at zero
back-off, a plan that uses the whole deadline (kkt always does) misses about
half the time, whatever the estimation error: h and h_hat are an
exchangeable pair, so P(|h|^2 < |h_hat|^2) = 1/2. Two ways to size the
back-off b (dB):

* analytic (`kkt_miss_probability`, `kkt_backoff_db`): the miss probability
  of a deadline-active plan on the stationary channel, inverted in closed
  form; exact for devices far above their feasibility threshold;
* empirical (`miss_rates`, `backoff_for_target`): every device, every round
  of a drawn trajectory, allocated with a policy and judged on the realized
  channel; the smallest b on a grid whose miss rate is under the target.
  This covers any policy (plans with slack miss less) and the devices near
  their threshold (which skip instead of missing as b grows).

The procedure for a run: pick the target (e.g. 5% of the uploads), call
`backoff_for_target` on the run's population, payload, deadline and channel
process, and run with `ChannelProcess(..., backoff_db=that)`; the round's
`deadline_misses` / `num_trained` then stays near the target.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax.energy.channel import (
  ChannelProcess,
  delivery,
  finite_number,
  trajectory,
)
from fedqjax.energy.devices import Devices
from fedqjax.energy.policies import allocate_policies
from fedqjax.errors import InvalidSetting
from fedqjax.typing import ArrayLike, PRNGKey


def kkt_miss_probability(process: ChannelProcess) -> float:
  """Miss probability of a deadline-active plan on a stationary channel.

  A plan that uses the whole deadline (kkt; deadline/split unless f_min
  binds) misses exactly when |h|^2 < beta |h_hat|^2, beta the back-off
  factor. (h, h_hat) are CN(0, 1) with correlation c, kappa = |c|^2 =
  (1 - s2) c(d)^2 (`ChannelProcess.estimate_kappa`: c(d) = rho^d for the
  AR(1), J0(2 pi f_D T d) for Clarke's process); the ratio of the two
  correlated exponentials gives

    P = (1 + (beta - 1) / sqrt(D)) / 2,   D = (1 + beta)^2 - 4 kappa beta,

  1/2 at beta = 1 for ANY estimation error (exchangeable pair). Evaluated
  as P = 2 beta (1 - kappa) / (sqrt(D) (sqrt(D) + 1 - beta)) for beta < 1
  (the same value, D - (1 - beta)^2 = 4 beta (1 - kappa); no cancellation
  at tiny P). It ignores that a device whose backed-off estimate falls
  below its feasibility threshold skips the round instead (rare for devices
  far above it).
  """
  beta = process.backoff
  kappa = process.estimate_kappa
  disc = (1.0 + beta) ** 2 - 4.0 * kappa * beta
  if disc <= 0.0:  # perfect estimate, no back-off
    return 0.0
  root = math.sqrt(disc)
  if beta >= 1.0:
    return 0.5 * (1.0 + (beta - 1.0) / root)
  return 2.0 * beta * (1.0 - kappa) / (root * (root + 1.0 - beta))


def kkt_backoff_db(process: ChannelProcess, target: float) -> float:
  """The back-off (dB) whose `kkt_miss_probability` equals `target`.

  Solves (1 - beta)^2 = a^2 ((1 + beta)^2 - 4 kappa beta), a = 1 - 2 target,
  for the root beta in (0, 1]: with b = (1 + a^2 - 2 a^2 kappa) / (1 - a^2),
  beta = b - sqrt(b^2 - 1), evaluated as 1 / (b + sqrt(b^2 - 1)) with
  1 - a^2 = 4 target (1 - target) (no cancellation at tiny targets).
  0 dB when target >= 1/2 or the estimate is perfect. `process.backoff_db`
  is ignored.
  """
  if not finite_number(target) or not 0 < target < 1:
    raise InvalidSetting("kkt_backoff_db", "target", target, "(0, 1)")
  kappa = process.estimate_kappa
  if target >= 0.5 or kappa >= 1.0:
    return 0.0
  a2 = (1.0 - 2.0 * target) ** 2
  b = (1.0 + a2 - 2.0 * a2 * kappa) / (4.0 * target * (1.0 - target))
  return 10.0 * math.log10(b + math.sqrt(b * b - 1.0))


@functools.partial(jax.jit, static_argnums=(7,))
def _judge_rounds(d, planned, realized, payload, n, T, flops, policy):
  def one(g, g_real):
    dev = d.replace(gain=g, realized_gain=g_real)
    a = allocate_policies(dev, payload, n, T, flops, (policy,))
    a = jax.tree.map(lambda x: x[0], a)
    out = delivery(a, dev, payload, T)
    sent = a.feasible
    missed = sent & ~out.delivered
    e = jnp.where(sent, a.e_comp_j + out.e_comm_j, 0.0)
    return sent, missed, e, jnp.where(missed, e, 0.0)

  return jax.vmap(one)(planned, realized)


_NAMES = (
  "miss_rate",
  "skip_rate",
  "energy_j",
  "wasted_j",
  "energy_per_upload_j",
)


def _summary(sent, missed, e, w):
  """One back-off's row of `miss_rates` (float64 on the host)."""
  sent, missed = np.asarray(sent), np.asarray(missed)
  e, w = np.asarray(e, np.float64), np.asarray(w, np.float64)
  tx = max(int(sent.sum()), 1)
  return (
    missed.sum() / tx,
    1.0 - sent.mean(),
    e.sum(-1).mean(),
    w.sum(-1).mean(),
    e.sum() / tx,
  )


def miss_rates(
  process: ChannelProcess,
  devices: Devices,
  payload_bits: ArrayLike,
  num_samples: ArrayLike,
  deadline_s: ArrayLike,
  flops_per_sample: ArrayLike,
  key: PRNGKey,
  num_rounds: int,
  backoffs_db: Sequence[float],
  policy: str = "kkt",
  stationary_start: bool = True,
) -> Dict[str, np.ndarray]:
  """Miss rate, skips and energy vs back-off, every device every round.

  Each back-off on `backoffs_db` replays the SAME channel draws (common
  random numbers: one key), every device allocating with `policy` on its
  planned gain and judged on the realized one. Host function.

  Returns:
    {"backoff_db", "miss_rate" (misses / transmissions), "skip_rate"
    (infeasible at the planned gain / device-rounds), "energy_j" (mean per
    round: computation plus spent communication of the devices that
    transmitted), "energy_per_upload_j" (the same per transmission),
    "wasted_j" (mean per round: that of the missed ones)}, each a float64
    [B] array.
  """
  rows = []
  for b in backoffs_db:
    proc = dataclasses.replace(process, backoff_db=float(b))
    planned, realized = trajectory(
      proc, devices.large_scale_gain, key, num_rounds, stationary_start
    )
    sent, missed, e, w = _judge_rounds(
      devices,
      planned,
      realized,
      payload_bits,
      num_samples,
      deadline_s,
      flops_per_sample,
      policy,
    )
    rows.append(_summary(sent, missed, e, w))
  cols = np.asarray(rows, np.float64).reshape(-1, len(_NAMES)).T
  out = dict(zip(_NAMES, cols))
  out["backoff_db"] = np.asarray(backoffs_db, np.float64)
  return out


def backoff_for_target(
  process: ChannelProcess,
  devices: Devices,
  payload_bits: ArrayLike,
  num_samples: ArrayLike,
  deadline_s: ArrayLike,
  flops_per_sample: ArrayLike,
  key: PRNGKey,
  target: float,
  num_rounds: int = 200,
  grid_db: Sequence[float] = tuple(0.5 * i for i in range(41)),
  policy: str = "kkt",
) -> float:
  """The smallest back-off on `grid_db` (dB, ascending) whose `miss_rates`
  miss rate is <= target; math.inf when none is (extend the grid)."""
  if not finite_number(target) or not 0 <= target <= 1:
    raise InvalidSetting("backoff_for_target", "target", target, "[0, 1]")
  r = miss_rates(
    process,
    devices,
    payload_bits,
    num_samples,
    deadline_s,
    flops_per_sample,
    key,
    num_rounds,
    grid_db,
    policy,
  )
  ok = np.flatnonzero(r["miss_rate"] <= target)
  return float(r["backoff_db"][ok[0]]) if ok.size else math.inf
