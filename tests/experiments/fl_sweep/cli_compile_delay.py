"""`python -m experiments.cifar_sweep` with the round's first compile held
back COMPILE_DELAY_S seconds in the process given by COMPILE_DELAY_PROCESS.

What a loaded host or a warm compilation cache on one process does to a
multi-process job: the processes reach the round's first collective far
apart. Gloo gives a peer 30 s to join a new communicator; the job must not
depend on arriving within that. Prints COMPILE_DELAYED when it delayed (a
JAX upgrade that renames the hooked function fails the test, it does not
pass without a delay).
"""

import os
import runpy
import sys
import time

from jax._src import compiler

_ORIG = compiler.compile_or_get_cached
_DONE = []


def _delayed(backend, computation, *args, **kwargs):
  name = str(computation.operation.attributes["sym_name"])
  me = next(
    (a.split("=")[1] for a in sys.argv if a.startswith("--process_id=")), None
  )
  if (
    not _DONE
    and "round_step" in name
    and me == os.environ.get("COMPILE_DELAY_PROCESS")
  ):
    _DONE.append(name)
    print(f"COMPILE_DELAYED {name} process {me}", flush=True)
    time.sleep(float(os.environ["COMPILE_DELAY_S"]))
  return _ORIG(backend, computation, *args, **kwargs)


if __name__ == "__main__":
  compiler.compile_or_get_cached = _delayed
  sys.argv[0] = "experiments.cifar_sweep"
  runpy.run_module("experiments.cifar_sweep", run_name="__main__")
