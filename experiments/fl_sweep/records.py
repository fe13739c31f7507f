"""What a run records: the state's counters on the host, one history row
per logged round, TensorBoard scalars / histograms / hparams (clu writer),
and the event-file marks that make a resumed run log each step once."""

from __future__ import annotations

import glob
import os
from typing import Any, Dict, List

import jax
import numpy as np

from experiments.common import settings as settings_lib
from experiments.fl_sweep.settings import Settings
from fedqjax import energy, federated


def hparams(config: Settings, run: str) -> Dict[str, Any]:
  """Scalars for clu's write_hparams: every key (tuples as strings)."""
  out: Dict[str, Any] = {"run": run}
  for k, v in settings_lib.flatten(config).items():
    out[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out


def counters(state) -> Dict[str, np.ndarray]:
  """The state's round and cumulative totals on the host (any process)."""
  return federated.to_host(
    dict(
      round=state.round,
      energy_comp_j=state.energy_comp_j,
      energy_comm_j=state.energy_comm_j,
      uploaded_bits=state.uploaded_bits,
      skipped_client_rounds=state.skipped_client_rounds,
      dropped_client_rounds=state.dropped_client_rounds,
      deadline_misses=state.deadline_misses,
      energy_wasted_j=state.energy_wasted_j,
    )
  )


def finite_state(state) -> bool:
  sums = federated.to_host(jax.tree.map(lambda p: p.sum(), state.params))
  return all(np.isfinite(x).all() for x in jax.tree.leaves(sums))


def history_row(
  rnd: int, m: Dict[str, Any], c: Dict[str, np.ndarray], policies
) -> Dict[str, Any]:
  """One JSON-able history row from host metrics and `counters`."""
  present = np.asarray(m["client_uploaded"])
  row = dict(
    round=rnd,
    loss=float(m["loss"]),
    mean_bits=float(m["mean_bits"]),
    num_trained=int(m["num_trained"]),
    num_uploaded=int(m["num_uploaded"]),
    skipped_client_rounds=int(m["skipped_client_rounds"]),
    dropped_client_rounds=int(m["dropped_client_rounds"]),
    bit_shortfall=int(m["bit_shortfall"]),
    round_uploaded_mb=float(m["uploaded_bits"]) / 8e6,
    cum_uploaded_mb=float(c["uploaded_bits"]) / 8e6,
    bits=[int(b) for b in np.asarray(m["client_bits"])[present]],
  )
  comp, comm = c["energy_comp_j"], c["energy_comm_j"]
  misses, wasted = c["deadline_misses"], c["energy_wasted_j"]
  row["energy"] = {
    p: dict(
      round_j=float(m["energy_j"][i]),
      latency_s=float(m["latency_s"][i]),
      cum_j=float(comp[i] + comm[i]),
      cum_comp_j=float(comp[i]),
      cum_comm_j=float(comm[i]),
      comp_share=float(energy.computation_share(comp[i], comm[i])),
      cum_deadline_misses=int(misses[i]),
      cum_wasted_j=float(wasted[i]),
    )
    for i, p in enumerate(policies)
  }
  return row


def write_round(writer, row: Dict[str, Any], m: Dict[str, Any]) -> None:
  """TensorBoard scalars and histograms of one round (clu writer)."""
  scalars = {
    k: v
    for k, v in row.items()  # heldout_*: evaluate_heldout
    if isinstance(v, (int, float))
    and k != "round"
    and not k.startswith("heldout_")
  }
  for p, e in row["energy"].items():
    scalars.update({f"{k}/{p}": v for k, v in e.items()})
  up = np.asarray(m["client_uploaded"])
  if up.any():
    scalars["rel_quant_error_max"] = float(
      np.asarray(m["client_rel_quant_error"])[up].max()
    )
    writer.write_histograms(
      row["round"],
      {
        "bits": np.asarray(m["client_bits"])[up],
        "energy_per_client_j": (
          np.asarray(m["client_energy_comp_j"][0])
          + np.asarray(m["client_energy_comm_j"][0])
        )[up],
      },
    )
  writer.write_scalars(row["round"], scalars)


def _event_files(sdir: str) -> List[str]:
  return sorted(glob.glob(os.path.join(sdir, "events.out.tfevents.*")))


def event_marks(writer, sdir: str) -> Dict[str, int]:
  """{event file: size} after a flush: what a checkpoint covers."""
  writer.flush()
  return {os.path.basename(f): os.path.getsize(f) for f in _event_files(sdir)}


def truncate_events(sdir: str, marks: Dict[str, int]) -> None:
  """Drops what was logged after the restored checkpoint (its `marks`; none
  before the first one): the resumed run logs it again."""
  for f in _event_files(sdir):
    size = marks.get(os.path.basename(f))
    if size is None:
      os.remove(f)
    elif os.path.getsize(f) > size:
      with open(f, "r+b") as fh:
        fh.truncate(size)
