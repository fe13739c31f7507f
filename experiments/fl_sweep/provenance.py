"""Where a result came from: the settings a run was made with (and their
hash), the software and the machine; and the guard that a rerun into an
existing workdir only resumes or skips runs made with the same settings.

Each run directory holds `settings.json`: the resolved settings that decide
the run's numbers (every key but the sweep's lists of runs and the keys that
only steer checkpointing, resuming and caching), its bits scheme, seed and
error-demand scale, and their SHA-256. A rerun compares it before anything
is written or compiled; a run with other settings (or none recorded) stops
the job with one line naming the first differing keys, unless the user asks
to move the stale runs aside (`--overwrite`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import time
from importlib import metadata
from typing import Any, Dict, List, Optional, Sequence

from experiments.common import settings as settings_lib

SETTINGS_FILE = "settings.json"
# Keys that do not change a run's numbers: which runs exist (the sweep's
# lists), how results are summarized across runs (target_margin), and how
# a run is checkpointed, stopped early or compiled, and whether the sweep
# draws figures.
NOT_IN_RUN_HASH = (
  "sweep.schemes",
  "sweep.seeds",
  "sweep.eps_scales",
  "sweep.target_margin",
  "ckpt_every",
  "max_rounds_this_run",
  "compilation_cache",
  "figures",
)
PACKAGES = (
  "fedqjax",
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "orbax-checkpoint",
  "numpy",
)


def _digest(obj) -> str:
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
  return hashlib.sha256(text.encode()).hexdigest()


def settings_hash(config) -> str:
  """SHA-256 of every key of the settings tree (the whole sweep)."""
  return _digest(settings_lib.flatten(config))


def run_record(config, run) -> Dict[str, Any]:
  """What decides a run's numbers, and its hash (settings.json)."""
  keys = json.loads(
    json.dumps(  # as stored: tuples become lists
      {
        k: v
        for k, v in settings_lib.flatten(config).items()
        if k not in NOT_IN_RUN_HASH
      },
      default=str,
    )
  )
  record = dict(
    run=run.name,
    bits_scheme=run.bits,
    seed=run.seed,
    eps_scale=run.eps_scale,
    settings=keys,
  )
  return dict(record, hash=_digest(record))


def _started(sdir: str) -> bool:
  """The run directory holds anything a run writes."""
  return os.path.isdir(sdir) and any(
    n != SETTINGS_FILE for n in os.listdir(sdir)
  )


def _differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
  a, b = old.get("settings", {}), new["settings"]
  diff = [
    f"config.{k} {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
    for k in sorted(set(a) | set(b))
    if a.get(k) != b.get(k)
  ]
  for k in ("bits_scheme", "seed", "eps_scale"):
    if old.get(k) != new[k]:
      diff.append(f"{k} {old.get(k)!r} -> {new[k]!r}")
  return diff


def stale_runs(
  workdir: str, records: Sequence[Dict[str, Any]]
) -> Dict[str, str]:
  """{run: why} for each planned run whose directory holds results of other
  settings (or of unrecorded ones); reads only."""
  stale = {}
  for rec in records:
    sdir = os.path.join(workdir, rec["run"])
    path = os.path.join(sdir, SETTINGS_FILE)
    if os.path.isfile(path):
      try:
        with open(path) as f:
          old = json.load(f)
      except (OSError, ValueError):
        old = {}
      if old.get("hash") != rec["hash"]:
        diff = _differences(old, rec) or ["an unreadable settings record"]
        stale[rec["run"]] = ", ".join(diff[:3]) + (
          f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
        )
    elif _started(sdir):
      stale[rec["run"]] = "no settings recorded (an older fedqjax)"
  return stale


def stale_message(workdir: str, stale: Dict[str, str]) -> str:
  """One line: which runs differ, how, and the two ways out."""
  first, why = next(iter(stale.items()))
  more = f" and {len(stale) - 1} more run(s)" if len(stale) > 1 else ""
  return (
    f"--workdir={workdir} holds runs made with other settings: "
    f"{first}: {why}{more}; valid: a new --workdir, or --overwrite to "
    "move the stale runs aside (to <workdir>/stale/) and recompute "
    "them"
  )


def move_aside(workdir: str, runs: Sequence[str]) -> Optional[str]:
  """Moves stale run directories (and the sweep's results, which mix them
  in) to <workdir>/stale/<UTC time>/; returns that directory."""
  if not runs:
    return None
  dest = os.path.join(
    workdir, "stale", time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
  )
  os.makedirs(dest, exist_ok=True)
  for name in list(runs) + ["results.json", "results.csv", "figures"]:
    src = os.path.join(workdir, name)
    if os.path.exists(src):
      os.replace(src, os.path.join(dest, name))
  return dest


def write_record(sdir: str, record: Dict[str, Any]) -> None:
  """settings.json of a run (atomic)."""
  os.makedirs(sdir, exist_ok=True)
  tmp = os.path.join(sdir, SETTINGS_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1, sort_keys=True, default=str)
  os.replace(tmp, os.path.join(sdir, SETTINGS_FILE))


def _git(root: str, *args: str) -> Optional[str]:
  """`git args` run in `root`: its stdout, or None when it fails."""
  try:
    out = subprocess.run(
      ["git", *args], cwd=root, text=True, capture_output=True, timeout=10
    )
  except (OSError, subprocess.SubprocessError):
    return None
  return None if out.returncode else out.stdout


def checkout_root() -> Optional[str]:
  """The git checkout fedqjax is imported from (the directory holding
  `fedqjax/`, when it is a repository's top level), else None (e.g. an
  installed wheel, even inside another repository's ignored venv)."""
  spec = importlib.util.find_spec("fedqjax")
  if spec is None or not spec.origin:
    return None
  root = os.path.dirname(os.path.dirname(os.path.abspath(spec.origin)))
  top = _git(root, "rev-parse", "--show-toplevel")
  if top is None or os.path.realpath(top.strip()) != os.path.realpath(root):
    return None
  return root


def _git_revision() -> Optional[str]:
  """The checkout's commit (with "+dirty" when a file of fedqjax/ or
  experiments/ differs from it), or None outside a checkout."""
  root = checkout_root()
  rev = root and _git(root, "rev-parse", "HEAD")
  if not rev:
    return None
  # From the top level, where the pathspecs name the two packages.
  dirty = _git(root, "status", "--porcelain", "--", "fedqjax", "experiments")
  if dirty is None:
    return None
  return rev.strip() + ("+dirty" if dirty.strip() else "")


def software_and_machine() -> Dict[str, Any]:
  """Package versions, git revision and the devices the sweep ran on."""
  import jax  # pylint: disable=g-import-not-at-top

  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  devices = jax.devices()
  return dict(
    versions=versions,
    git_revision=_git_revision(),
    device_kind=devices[0].device_kind,
    backend=jax.default_backend(),
    num_devices=len(devices),
    num_processes=jax.process_count(),
  )
