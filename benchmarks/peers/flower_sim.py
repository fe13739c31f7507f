"""The same federated DDPM in Flower's simulation engine (Ray backend).

Each client is a `flwr.client.NumPyClient` whose `fit` receives the global
weights as NumPy arrays, runs the same local training as the torch loop
(TorchUNet, I Adam steps, clipping 1.0), quantizes its update to `bits` bits
and returns w + Q(w_k - w) with n_k examples; the server runs Flower's FedAvg
(weighted by n_k). Rounds are timed from `configure_fit` to the end of
`aggregate_fit` (broadcast + Ray scheduling + client training + transfer +
aggregation); Ray/engine start-up is reported separately.

Uses `flwr.simulation.start_simulation` (deprecated since Flower 1.13 in
favour of `flwr run` / `run_simulation`, but still shipped in 1.42 and the
only API that takes a plain client_fn + strategy in-process).
Ray is told about the machine's CPUs; each virtual client asks for
`flower_cpus_per_client` CPUs, so with 2 cores and 1 CPU per client two
clients train concurrently, each with torch.set_num_threads(1).

  PYTHONPATH=. python -m benchmarks.peers.flower_sim '<BenchConfig json>'
(normally started by benchmarks/peers/__main__.py).
"""

from __future__ import annotations

import math
import os
import time

from benchmarks.peers import common

_CACHE = {}  # per Ray worker process: model, schedule, data


def _client_state(cfg: common.BenchConfig):
  import numpy as np
  import torch

  from benchmarks.peers import torch_loop

  if "model" not in _CACHE:
    torch.set_num_threads(max(1, int(math.floor(cfg.flower_cpus_per_client))))
    imgs, counts = common.make_client_data(cfg)
    _CACHE["images"] = torch.from_numpy(
      np.ascontiguousarray(imgs.transpose(0, 1, 4, 2, 3))
    )
    _CACHE["counts"] = counts
    _CACHE["model"], _CACHE["sched"] = torch_loop.build(cfg)
    _CACHE["gen"] = torch.Generator().manual_seed(cfg.seed + os.getpid())
  return _CACHE


def make_client_fn(cfg: common.BenchConfig):
  import flwr
  import numpy as np
  import torch

  class DDPMClient(flwr.client.NumPyClient):
    def __init__(self, cid: int):
      self.cid = cid

    def get_parameters(self, config):
      st = _client_state(cfg)
      return [
        v.detach().numpy().copy() for v in st["model"].state_dict().values()
      ]

    def fit(self, parameters, config):
      from benchmarks.peers import torch_unet as TU

      st = _client_state(cfg)
      model = st["model"]
      names = list(model.state_dict())
      global_w = {
        n: torch.from_numpy(np.asarray(p)) for n, p in zip(names, parameters)
      }
      model.load_state_dict(global_w)
      n_k = int(st["counts"][self.cid])
      loss = TU.local_train(
        model,
        st["images"][self.cid],
        n_k,
        cfg.local_steps,
        cfg.batch,
        cfg.lr,
        st["sched"],
        1.0,
        st["gen"],
      )
      with torch.no_grad():
        local = model.state_dict()
        upd = [local[n] - global_w[n] for n in names]
        TU.stochastic_quantize_(upd, cfg.bits, st["gen"])
        out = [(global_w[n] + u).numpy() for n, u in zip(names, upd)]
      return out, n_k, {"loss": float(loss)}

  def client_fn(context):
    cid = int(context.node_config["partition-id"])
    return DDPMClient(cid).to_client()

  return client_fn


def _timed_strategy(cfg: common.BenchConfig, init, marks: dict):
  """Flower's FedAvg over all clients, recording in `marks` when each round
  starts (`configure_fit`) and ends (`aggregate_fit`), its mean client loss,
  result count and first failure."""
  import numpy as np
  from flwr.common import ndarrays_to_parameters
  from flwr.server.strategy import FedAvg

  class TimedFedAvg(FedAvg):
    def configure_fit(self, server_round, parameters, client_manager):
      marks["start"].append(time.perf_counter())
      return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
      out = super().aggregate_fit(server_round, results, failures)
      marks["end"].append(time.perf_counter())
      if failures:
        marks.setdefault("failures", []).append(repr(failures[0])[:500])
      ls = [r.metrics.get("loss", float("nan")) for _, r in results]
      marks["losses"].append(float(np.mean(ls)) if ls else float("nan"))
      marks.setdefault("n_results", []).append(len(results))
      return out

  return TimedFedAvg(
    fraction_fit=1.0,
    fraction_evaluate=0.0,
    min_fit_clients=cfg.clients,
    min_available_clients=cfg.clients,
    min_evaluate_clients=0,
    initial_parameters=ndarrays_to_parameters(init),
  )


def _simulate(cfg: common.BenchConfig, strategy, ncpu: int) -> float:
  """Runs 1 warm-up + `cfg.rounds` rounds on Ray; returns its start time."""
  from flwr.server import ServerConfig
  from flwr.simulation import start_simulation

  t0 = time.perf_counter()
  start_simulation(
    client_fn=make_client_fn(cfg),
    num_clients=cfg.clients,
    config=ServerConfig(num_rounds=cfg.rounds + 1),
    strategy=strategy,
    client_resources={"num_cpus": cfg.flower_cpus_per_client, "num_gpus": 0.0},
    ray_init_args={
      "num_cpus": ncpu,
      "num_gpus": 0,
      "include_dashboard": False,
      "ignore_reinit_error": True,
      "object_store_memory": 300 * 2**20,
      "log_to_driver": False,
      "runtime_env": {
        "env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}
      },
    },
  )
  return t0


def run(cfg: common.BenchConfig) -> dict:
  import flwr
  import torch

  from benchmarks.peers import torch_loop
  from benchmarks.peers import torch_unet as TU

  model, _ = torch_loop.build(cfg)
  init = [v.detach().numpy().copy() for v in model.state_dict().values()]
  marks = {"start": [], "end": [], "losses": []}
  strategy = _timed_strategy(cfg, init, marks)
  ncpu = os.cpu_count() or 1
  t0 = _simulate(cfg, strategy, ncpu)
  total = time.perf_counter() - t0
  starts, ends = marks["start"], marks["end"]
  if len(ends) < cfg.rounds + 1:
    raise RuntimeError(
      f"Flower finished {len(ends)} of {cfg.rounds + 1} rounds; "
      f"failures: {marks.get('failures')}"
    )
  per_round = [e - s for s, e in zip(starts, ends)]
  startup = starts[0] - t0
  return dict(
    peer="flower",
    version=flwr.__version__,
    torch_version=torch.__version__,
    cpus_per_client=cfg.flower_cpus_per_client,
    ray_cpus=ncpu,
    num_params=TU.num_params(model),
    startup_s=startup,
    total_s=total,
    first_round_s=per_round[0],
    n_results=marks.get("n_results"),
    failures=marks.get("failures"),
    losses=marks["losses"],
    **common.summarize(per_round[1:]),
  )


if __name__ == "__main__":
  # Run through the importable module (not __main__) so Ray pickles the
  # client code by reference and each worker keeps one _CACHE.
  from benchmarks.peers import flower_sim as _module

  common.runner_main(_module.run)
