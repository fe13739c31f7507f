"""Named energy regimes: where a device's energy constants come from.

How much on-demand quantization saves in TOTAL device energy depends on how
large the computation is next to the upload. With this project's constants
(MODEL.md sec. 3: c_k = the U-Net's XLA FLOPs per training image / FLOPs
per cycle in {8, 16, 32}) the computation dominates as soon as a device does
several local steps; the energy-efficient-FL literature (Yang et al. 2021)
uses c_k ~ 1e4-3e4 cycles per sample, where the computation is negligible
and the upload is nearly everything. A number is only meaningful with the
regime it came from:

  flops              no overrides: today's default (MODEL.md sec. 3).
  yang2021           the simulation setup of Yang et al., IEEE TWC 2021,
                     Sec. VI (`YANG2021`).
  cycles_per_sample  a user-given c: c_k = c x U[1 - s, 1 + s].

`resolve(name, energy_config, cycles_per_sample)` applies a regime to an
`EnergyConfig`; `computation_share(e_comp, e_comm)` is the share both
programs report.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax.energy.devices import EnergyConfig
from fedqjax.errors import InvalidSetting
from fedqjax.typing import ArrayLike

YANG2021_SOURCE = (
  'Z. Yang, M. Chen, W. Saad, C. S. Hong, M. Shikh-Bahaei, "Energy '
  'Efficient Federated Learning Over Wireless Communication Networks", '
  "IEEE Trans. Wireless Commun. 20(3):1935-1949, 2021 (arXiv 1911.02417), "
  "Sec. VI (simulation setup)"
)


@dataclasses.dataclass(frozen=True)
class Regime:
  """A named set of device-energy constants.

  Attributes:
    name: the regime's name (a key of REGIMES).
    source: where the values come from (a citation).
    energy: `EnergyConfig` field -> value the regime sets.
    samples_per_step: samples a device computes per local iteration (None:
      the training batch).
    doc: what the regime is, and how its values were read.
  """

  name: str
  source: str
  energy: Mapping[str, Any] = dataclasses.field(hash=False)
  samples_per_step: Optional[int] = None
  doc: str = ""


FLOPS = Regime(
  name="flops",
  source="MODEL.md sec. 3: the model's training FLOPs per sample from XLA's "
  "cost analysis / the device's FLOPs per cycle",
  energy={},
  doc="No overrides: c_k = flops_per_sample / flops_per_cycle, "
  "flops_per_cycle drawn from EnergyConfig.flops_per_cycle_choices.",
)

YANG2021 = Regime(
  name="yang2021",
  source=YANG2021_SOURCE,
  energy=dict(
    num_devices=50,
    cell_shape="square",
    radius_m=250.0,
    pathloss_const_db=128.1,
    pathloss_exp_db=37.6,
    shadowing_db=8.0,
    noise_psd_dbm_hz=-174.0,
    cycles_per_sample=2e4,
    cycles_spread=0.5,
    tau_mean=1e-28,
    tau_spread=0.0,
    f_min_hz=1e6,
    f_max_hz=2e9,
    p_max_w=0.01,
    total_bandwidth_hz=20e6,
  ),
  samples_per_step=500,
  doc="""The values are transcribed from the paper's Section VI as cited
(the paper's full text is not in this project): N = 50 users uniform in a
500 m x 500 m square with the base station at its centre (cell_shape
"square", radius_m 250); path loss 128.1 + 37.6 log10 d[km] dB, shadowing
std 8 dB; N0 = -174 dBm/Hz; C_k uniform in [1, 3] x 1e4 cycles per sample
(cycles_per_sample 2e4, cycles_spread 0.5); kappa = 1e-28 for every user
(tau_mean 1e-28, tau_spread 0); f_max = 2 GHz; p_max = 10 dBm = 0.01 W (the
paper writes "10 dB"; read as dBm, a power); B = 20 MHz in total
(total_bandwidth_hz: equal FDMA shares here, the paper optimizes the split,
as the `shared` allocation does); D_k = 500 samples (samples_per_step 500:
one local iteration is one pass over D_k).
Not from the paper: f_min_hz = 1e6 Hz (the paper has 0 <= f <= f_max;
EnergyConfig needs f_min > 0). It does bind: at T ~ 1e3 s and c n ~ 1e7
cycles the deadline and split policies would run at ~1e4 Hz, and the
energy-optimal f of a low bit-width upload can fall below 1 MHz (fp32
uploads of the paper U-Net stay above 10 MHz). The computation it forces is
at most tau c n f_min^2 = 1e-28 x 3e4 x 500 x 1e12 = 1.5e-9 J per device and
round, below 1e-6 of any of these uploads' energy, so no total moves.
min_distance_m keeps its default (10 m). The paper's own
upload is s = 28.1 kbit; ours is the quantized DDPM update.
Fields set: num_devices, cell_shape, radius_m, pathloss_const_db,
pathloss_exp_db, shadowing_db, noise_psd_dbm_hz, cycles_per_sample,
cycles_spread, tau_mean, tau_spread, f_min_hz, f_max_hz, p_max_w,
total_bandwidth_hz.""",
)

CYCLES_PER_SAMPLE = Regime(
  name="cycles_per_sample",
  source="user-given cycles per sample c (EnergyConfig.cycles_per_sample)",
  energy={},
  doc="c_k = c x U[1 - cycles_spread, 1 + cycles_spread]; the caller gives c "
  "(`resolve(..., cycles_per_sample=c)` or EnergyConfig.cycles_per_sample).",
)

REGIMES: Mapping[str, Regime] = {
  r.name: r for r in (FLOPS, YANG2021, CYCLES_PER_SAMPLE)
}


def get(name: str) -> Regime:
  """The regime `name`; InvalidSetting listing REGIMES otherwise."""
  if name not in REGIMES:
    raise InvalidSetting("Regime", "name", name, " | ".join(REGIMES))
  return REGIMES[name]


def resolve(
  name: str,
  energy_config: Optional[EnergyConfig] = None,
  cycles_per_sample: Optional[float] = None,
) -> EnergyConfig:
  """`energy_config` (default: EnergyConfig()) with regime `name` applied.

  Args:
    name: a key of REGIMES.
    energy_config: the config to start from; the regime's fields replace
      its values.
    cycles_per_sample: the "cycles_per_sample" regime's c (else the
      config's own must be set); not accepted by the other regimes.

  Raises:
    InvalidSetting: an unknown name, a missing or unexpected
      cycles_per_sample, or a value EnergyConfig rejects.
  """
  regime = get(name)
  cfg = EnergyConfig() if energy_config is None else energy_config
  if name == "cycles_per_sample":
    c = (
      cfg.cycles_per_sample if cycles_per_sample is None else cycles_per_sample
    )
    if c is None:
      raise InvalidSetting(
        "resolve",
        "cycles_per_sample",
        None,
        "finite and > 0 with regime cycles_per_sample",
      )
    return dataclasses.replace(cfg, cycles_per_sample=c)
  if cycles_per_sample is not None:
    raise InvalidSetting(
      "resolve",
      "cycles_per_sample",
      cycles_per_sample,
      f"None with regime {name} (only regime cycles_per_sample takes it)",
    )
  return dataclasses.replace(cfg, **regime.energy)


def computation_share(e_comp: ArrayLike, e_comm: ArrayLike):
  """E_comp / (E_comp + E_comm), elementwise; NaN where both are 0.

  numpy in, numpy (float64) out; jax arrays (traced too) in, jax out.
  """
  xp = (
    jnp
    if isinstance(e_comp, jax.Array) or isinstance(e_comm, jax.Array)
    else np
  )
  e_comp = xp.asarray(e_comp, None if xp is jnp else np.float64)
  total = e_comp + xp.asarray(e_comm, e_comp.dtype)
  ok = total != 0
  return xp.where(ok, e_comp / xp.where(ok, total, 1.0), xp.nan)
