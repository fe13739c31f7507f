"""Crash-safe checkpoints of the server state and history (orbax).

orbax's CheckpointManager writes each step into a temporary directory and
renames it when complete, so a kill during a write leaves the previous step
intact. On restore, a step that fails to load (damaged directory) is
reported and the previous good step is used.
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import Any, List, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("fedqjax")


class Checkpointer:
  """Keeps the last `max_to_keep` rounds of (state, history)."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._mgr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def save(self, state, history: List[dict]) -> None:
    step = int(state.round)
    if step in self._mgr.all_steps():
      return
    self._mgr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        history=ocp.args.JsonSave(history)))
    self._mgr.wait_until_finished()

  def restore_latest(self, template) -> Tuple[Any, List[dict]]:
    """(state, history) of the newest loadable step, or (template, [])."""
    for step in sorted(self._mgr.all_steps(), reverse=True):
      try:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self._mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            history=ocp.args.JsonRestore()))
        state = out["state"]
        leaves = jax.tree.leaves(state)
        if not all(np.isfinite(np.asarray(x)).all() for x in leaves
                   if np.issubdtype(np.asarray(x).dtype, np.floating)):
          raise ValueError("non-finite values in checkpoint")
        history = [h for h in (out["history"] or [])
                   if h["round"] <= int(state.round)]
        return state, history
      except Exception as e:  # pylint: disable=broad-except
        bad = os.path.join(self.directory, str(step))
        log.error("checkpoint step %d in %s is damaged (%s: %s); moving it "
                  "aside and trying the previous one", step, self.directory,
                  type(e).__name__, str(e)[:200])
        if os.path.isdir(bad):
          shutil.move(bad, bad + ".damaged")
        self._mgr.reload()
    return template, []

  def close(self) -> None:
    self._mgr.close()
