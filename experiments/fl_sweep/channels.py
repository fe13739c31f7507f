"""The `channel` section on the host: the round-by-round channel a run meets.

With `channel.model = static` nothing here runs: the round sees the devices
it always saw (bitwise today's runs). With `gauss_markov`, the seed's whole
channel trajectory (planned and realized gains, [rounds, N]) is drawn once
by `fedqjax.energy.channel.trajectory` from the seed's device stream, so a
resumed run meets the same channel, and each round gets its row: the
devices' `gain` is what the allocator plans with, `realized_gain` what the
upload meets (the compiled round is the same for every round). The process
starts at its stationary law (Rayleigh fading from round 0, whatever
`energy.rayleigh_fading`): the closed-form margin of `channel.miss_target`
assumes it.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import jax
import numpy as np

from fedqjax import energy
from fedqjax.energy import channel as channel_lib
from fedqjax.energy import channel_margin

Trajectory = Tuple[np.ndarray, np.ndarray]  # planned, realized [R, N]


def process_of(config, deadline_s: float) -> channel_lib.ChannelProcess:
  """The ChannelProcess of `config.channel`: the AR(1) chain of `rho`, or
  Clarke's process when doppler_hz > 0 (f_D x the round deadline; its
  estimate d rounds old has Clarke's lag-d correlation). With miss_target
  > 0 the back-off is the closed-form margin of a deadline-active plan on
  the stationary channel, `channel_margin.kkt_backoff_db`."""
  c = config.channel
  fields = dict(
    estimate_delay=c.estimate_delay,
    estimate_noise=c.estimate_noise,
    backoff_db=c.backoff_db,
  )
  if c.doppler_hz > 0:
    process = channel_lib.ChannelProcess.clarke(
      c.doppler_hz, deadline_s, **fields
    )
  else:
    process = channel_lib.ChannelProcess(rho=c.rho, **fields)
  if c.miss_target > 0:  # the margin for the trajectory's first policy
    margin = channel_margin.kkt_backoff_db(process, c.miss_target)
    process = dataclasses.replace(process, backoff_db=margin)
  return process


def trajectory(
  config, devices: energy.Devices, key, deadline_s: float
) -> Optional[Trajectory]:
  """The run's channel rows, or None for the static channel."""
  if config.channel.model == "static":
    return None
  planned, realized = channel_lib.trajectory(
    process_of(config, deadline_s),
    devices.large_scale_gain,
    jax.random.fold_in(key, 1),  # the device stream's second use
    config.fed.rounds,
    stationary_start=True,
  )
  return np.asarray(planned), np.asarray(realized)


def round_devices(
  devices: energy.Devices, traj: Optional[Trajectory], rnd: int, mesh=None
) -> energy.Devices:
  """The devices of round `rnd` (1-based): `devices` itself when static."""
  if traj is None:
    return devices
  from fedqjax import federated  # pylint: disable=g-import-not-at-top

  d = channel_lib.devices_at_round(devices, *traj, rnd - 1)
  return d if mesh is None else federated.replicate(d, mesh)
