"""Device energy model and energy-optimal allocation (arXiv 2403.04430; Yang et al. TWC 2021)."""

from fedqjax.energy.allocator import (
  DEADLINE_RULES,
  REASON_COMPUTE,
  REASON_OK,
  REASON_UPLOAD,
  Allocation,
  allocate,
  deadline_for,
  feasible_mask,
  make_allocation,
  min_round_time,
  naive_allocation,
)
from fedqjax.energy.devices import (
  CELL_SHAPES,
  Devices,
  EnergyConfig,
  cycles_factor,
  pathloss_db,
  redraw_fading,
  sample_devices,
  sample_devices_from_keys,
  validate_devices,
)
from fedqjax.energy.model import (
  comp_energy,
  cycles_per_sample,
  power_of_time,
  rate,
  snr,
  t_min,
  upload_time,
)
from fedqjax.energy.policies import (
  ALLOCATIONS,
  allocate_policies,
  check_policies,
)
from fedqjax.energy.regimes import (
  REGIMES,
  Regime,
  computation_share,
  resolve,
)
from fedqjax.energy.shared_bandwidth import allocate_shared_bandwidth
