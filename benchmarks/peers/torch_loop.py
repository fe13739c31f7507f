"""FedAvg of the DDPM U-Net the way most papers' code does it: PyTorch, one
client after another.

Per round, for each client k sequentially: load the global weights, run I
Adam steps (fresh optimizer, grad clipping 1.0) on B-sized minibatches drawn
uniformly with replacement from its n_k images, quantize its update
u_k = w_k - w to `bits` bits (per-tensor min-max stochastic rounding,
vectorized), then average the dequantized updates weighted by n_k and apply
them; EMA of the global weights as fedqjax keeps.

  PYTHONPATH=. python -m benchmarks.peers.torch_loop '<BenchConfig json>'
(normally started by benchmarks/peers/__main__.py).
"""

from __future__ import annotations

import time

from benchmarks.peers import common


def build(cfg: common.BenchConfig):
  import torch

  from benchmarks.peers import torch_unet as TU

  torch.manual_seed(cfg.seed)
  model = TU.TorchUNet(cfg.channels, cfg.res, **common.model_kwargs(cfg.model))
  return model, TU.LinearSchedule(cfg.T)


def fedavg_round(model, global_w, ema_w, images, counts, cfg, sched, gen):
  """One sequential FedAvg round; updates global_w / ema_w in place."""
  import torch

  from benchmarks.peers import torch_unet as TU

  names = list(global_w)
  total = float(sum(int(c) for c in counts))
  avg = {n: torch.zeros_like(v) for n, v in global_w.items()}
  losses = []
  for k in range(cfg.clients):  # the sequential client loop
    model.load_state_dict(global_w)
    losses.append(
      TU.local_train(
        model,
        images[k],
        int(counts[k]),
        cfg.local_steps,
        cfg.batch,
        cfg.lr,
        sched,
        1.0,
        gen,
      )
    )
    with torch.no_grad():
      local = model.state_dict()
      upd = [local[n] - global_w[n] for n in names]
      TU.stochastic_quantize_(upd, cfg.bits, gen)
      c = int(counts[k]) / total
      for n, u in zip(names, upd):
        avg[n].add_(u, alpha=c)
  with torch.no_grad():
    for n in names:
      global_w[n].add_(avg[n])
      ema_w[n].mul_(0.999).add_(global_w[n], alpha=0.001)
  return sum(losses) / len(losses)


def run(cfg: common.BenchConfig) -> dict:
  import numpy as np
  import torch

  from benchmarks.peers import torch_unet as TU

  torch.set_num_threads(cfg.threads)
  dev = torch.device(cfg.torch_device)
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  imgs, counts = common.make_client_data(cfg)
  images = torch.from_numpy(
    np.ascontiguousarray(imgs.transpose(0, 1, 4, 2, 3))
  ).to(dev)  # NCHW
  model, sched = build(cfg)
  model.to(dev)
  global_w = {n: v.detach().clone() for n, v in model.state_dict().items()}
  ema_w = {n: v.clone() for n, v in global_w.items()}
  gen = torch.Generator(device=dev).manual_seed(cfg.seed)
  t0 = time.perf_counter()
  warm_loss = fedavg_round(
    model, global_w, ema_w, images, counts, cfg, sched, gen
  )
  sync()
  first = time.perf_counter() - t0
  times, cpu, losses = [], [], []
  for _ in range(cfg.rounds):
    t0, c0 = time.perf_counter(), time.process_time()
    losses.append(
      fedavg_round(model, global_w, ema_w, images, counts, cfg, sched, gen)
    )
    sync()
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return dict(
    peer="torch_loop",
    version=torch.__version__,
    threads=torch.get_num_threads(),
    device=str(dev),
    num_params=TU.num_params(model),
    first_round_s=first,
    losses=[warm_loss] + losses,
    **common.summarize(times, cpu),
  )


if __name__ == "__main__":
  common.runner_main(run)
