r"""The paper's comparison: fp32 vs fixed 8-bit vs on-demand bits, each priced
under every allocation policy (kkt, deadline, split, max).

Usage:
  python -m experiments.cifar_sweep --workdir=workdir/cifar_sweep
  python -m experiments.cifar_sweep --config=experiments/configs/cifar_sweep.py:paper \
      --workdir=/tmp/paper --config.fed.num_clients=32
  python -m experiments.cifar_sweep --config.fed.rounds=10 --config.sweep.schemes=fp32,ondemand
  python -m experiments.cifar_sweep --config.sweep.eps_scales=0.1,1,10 --config.sweep.seeds=0,1

Presets (one config argument):
  cpu   (default) small UNet, Fashion-MNIST unless CIFAR-10 is prepared in
        tfds, N = K = 10 clients, 30 rounds, 3 seeds, held-out denoising loss
        every 5 rounds (FID off: noise at this budget); about 20 minutes on
        2 CPU cores (see docs/results.md).
  quality  the smallest federated training after which Fashion-MNIST
        garments are recognizable in the sample grid: the cpu U-Net, all
        60k training images, N = K = 6 clients x 16 local steps x batch 8 for
        80 rounds (~61k images per scheme, 1,280 local steps), fp32 and
        on-demand, one seed, FID/KID on 500 DDIM-50 samples and the DDPM
        bound in bits/dim at the end; within 90 minutes on 2 CPU cores
        (docs/results.md, "Quality preset").
  paper ch=128 UNet (35.7M params), CIFAR-10 (downloaded by tfds when not
        prepared), K=10, FID on 10k DDIM samples; for a GPU/TPU
        (docs/accelerators.md).
"""

import ml_collections

from experiments.fl_sweep import settings

PRESETS = tuple(p for p in settings.PRESETS if p != "test")  # test.py: "test"


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  """Returns the sweep config for `preset` in PRESETS.

  Every key, its default (the cpu preset) and its range are declared once,
  in experiments/fl_sweep/settings.py; a preset only overrides.
  """
  if preset not in PRESETS:
    raise ValueError(
      f"preset {preset!r} is invalid; valid: " + ", ".join(PRESETS)
    )
  c = settings.default_config()
  c.preset = preset
  if preset == "paper":
    _paper(c)
  elif preset == "quality":
    _quality(c)
  return c


def _paper(c: ml_collections.ConfigDict) -> None:
  """Ho et al.'s CIFAR-10 U-Net (35.7M parameters), FID on 10k samples.

  CIFAR-10 by name, downloaded by tfds when not prepared (never the
  28x28 Fashion-MNIST fallback of `auto`: this U-Net takes 32x32 only).
  """
  c.data.name = "cifar10"
  c.data.download = True  # tfds fetches it once (~163 MB) if not prepared
  c.data.max_train = 0
  c.data.num_test = 10000
  c.model.ch = 128
  c.model.ch_mult = (1, 2, 2, 2)
  c.model.num_res_blocks = 2
  c.model.num_groups = 32
  c.model.dtype = "bfloat16"
  c.fed.local_steps = 5
  c.fed.batch_size = 32
  c.fed.rounds = 100
  c.fed.ema_decay = 0.999
  c.optim.lr = 2e-4
  c.eval.every = 20
  c.eval.num_samples = 10000
  c.eval.batch_size = 500
  c.eval.ddim_steps = 100
  c.eval.fid = True
  c.eval.kid_subset_size = 1000
  c.sweep.seeds = (0,)


def _quality(c: ml_collections.ConfigDict) -> None:
  """The cpu preset, trained long enough for recognizable samples.

  Sized from a centralized run of the same U-Net (Adam 1e-3, batch 48, 1,279
  steps, EMA, DDIM 50: recognizable garments, ~61k images): K x B = 48
  images per local step and R x I = 1,280 local steps.
  """
  c.data.max_train = 0  # all 60k training images
  c.data.num_test = 500  # FID/KID reference (0.4 s per image on 2 cores)
  c.fed.num_clients = c.fed.clients_per_round = 6
  c.fed.local_steps = 16
  c.fed.batch_size = 8
  c.fed.rounds = 80
  # Rolled clients and local steps (lax.map + im2col): compiles in ~50 s;
  # unrolling 6 x 16 local steps would compile for tens of minutes. 49 img/s
  # at K = 6, I = 16, B = 8 (benchmarks/RESULTS.md, "XLA:CPU back-ends").
  c.fed.client_loop = "map"
  c.fed.ema_decay = 0.99  # the warm-up (1 + r) / (10 + r) binds: ~10 rounds
  c.eval.every = 10
  c.eval.num_samples = 500
  c.eval.ddim_steps = 50
  c.eval.fid = True
  c.eval.kid_subset_size = 250
  c.eval.vlb_size = 128
  c.sweep.schemes = ("fp32", "ondemand")
  c.sweep.seeds = (0,)
