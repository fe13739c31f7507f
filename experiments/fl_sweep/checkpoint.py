"""Crash-safe checkpoints of the server state and history (orbax).

orbax's CheckpointManager writes each step into a temporary directory and
renames it when complete, so a kill during a write leaves the previous step
intact. Each step also stores a SHA-256 digest of the state's bytes and of
the history: orbax's OCDBT store keeps no checksum of array data, so a
same-size change to a data file (bit rot, a bad copy) would otherwise restore
silently. On restore, a step that fails to load, fails its digest or holds a
non-finite value is reported and the previous good step is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from typing import Any, Dict, List, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from fedqjax.federated import to_host

log = logging.getLogger("fedqjax")


def state_digest(state) -> str:
  """SHA-256 over every leaf's path, dtype, shape and bytes (PRNG keys as
  their key data), on the host of any process."""
  h = hashlib.sha256()
  for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    a = np.ascontiguousarray(to_host(x))
    h.update(f"{jax.tree_util.keystr(path)}:{a.dtype.str}:{a.shape};".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def history_digest(history: List[dict]) -> str:
  return hashlib.sha256(
    json.dumps(history, sort_keys=True).encode()
  ).hexdigest()


def _check(state, history, digest: Dict[str, str] | None) -> None:
  """Raises ValueError when the restored content is not what was saved."""
  if digest is not None:
    if digest.get("state") != state_digest(state):
      raise ValueError("state digest mismatch (array data changed on disk)")
    if digest.get("history") != history_digest(history):
      raise ValueError("history digest mismatch (changed on disk)")
  leaves = [
    np.asarray(to_host(x))
    for x in jax.tree.leaves(state)
    if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
  ]
  if not all(
    np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.floating)
  ):
    raise ValueError("non-finite values in checkpoint")


class Checkpointer:
  """Keeps the last `max_to_keep` rounds of (state, history)."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._mgr = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True
      ),
    )

  def save(
    self, state, history: List[dict], events: Dict[str, int] | None = None
  ) -> None:
    step = int(to_host(state.round))
    if step in self._mgr.all_steps():
      return
    digest = dict(state=state_digest(state), history=history_digest(history))
    self._mgr.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        history=ocp.args.JsonSave(history),
        events=ocp.args.JsonSave(events or {}),
        digest=ocp.args.JsonSave(digest),
      ),
    )
    self._mgr.wait_until_finished()

  def _restore(self, step: int, template) -> Tuple[Any, List[dict]]:
    """(state, history) of `step`, checked; raises on any damage."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    items = dict(
      state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()
    )
    has_digest = os.path.isdir(
      os.path.join(self.directory, str(step), "digest")
    )
    if has_digest:
      items["digest"] = ocp.args.JsonRestore()
    else:  # written before digests existed: loads, unverified
      log.warning(
        "checkpoint step %d in %s has no digest; its array data "
        "cannot be verified",
        step,
        self.directory,
      )
    out = self._mgr.restore(step, args=ocp.args.Composite(**items))
    history = out["history"] or []
    _check(out["state"], history, out["digest"] if has_digest else None)
    return out["state"], history

  def restore_latest(self, template) -> Tuple[Any, List[dict], dict]:
    """(state, history, event marks) of the newest loadable step, or
    (template, [], {})."""
    for step in sorted(self._mgr.all_steps(), reverse=True):
      try:
        state, history = self._restore(step, template)
        rnd = int(to_host(state.round))
        return (
          state,
          [h for h in history if h["round"] <= rnd],
          self._events(step),
        )
      except Exception as e:  # pylint: disable=broad-except
        bad = os.path.join(self.directory, str(step))
        log.error(
          "checkpoint step %d in %s is damaged (%s: %s); moving it "
          "aside and trying the previous one",
          step,
          self.directory,
          type(e).__name__,
          str(e)[:200],
        )
        if os.path.isdir(bad):
          shutil.move(bad, bad + ".damaged")
        self._mgr.reload()
    return template, [], {}

  def _events(self, step: int) -> Dict[str, int]:
    if not os.path.isdir(os.path.join(self.directory, str(step), "events")):
      return {}
    return (
      self._mgr.restore(
        step, args=ocp.args.Composite(events=ocp.args.JsonRestore())
      )["events"]
      or {}
    )

  def close(self) -> None:
    self._mgr.close()
