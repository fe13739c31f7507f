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
        2 CPU cores (see README).
  quality  the smallest federated training after which Fashion-MNIST
        garments are recognizable in the sample grid: the cpu U-Net, all
        60k training images, N = K = 6 clients x 16 local steps x batch 8 for
        80 rounds (~61k images per scheme, 1,280 local steps), fp32 and
        on-demand, one seed, FID/KID on 500 DDIM-50 samples and the DDPM
        bound in bits/dim at the end; within 90 minutes on 2 CPU cores
        (README, "Quality preset").
  paper ch=128 UNet (35.7M params), CIFAR-10, K=10, FID on 10k DDIM samples;
        for a GPU/TPU.
"""
import ml_collections


PRESETS = ("cpu", "quality", "paper")


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  """Returns the sweep config for `preset` in PRESETS."""
  if preset not in PRESETS:
    raise ValueError(f"preset {preset!r} is invalid; valid: "
                     + ", ".join(PRESETS))
  paper = preset == "paper"
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.seed = 0  # synthetic data and sampling noise; training: sweep.seeds

  c.data = ml_collections.ConfigDict()
  c.data.name = "auto"  # auto: CIFAR-10 if tfds has it prepared, else FMNIST
  c.data.data_dir = ""  # fashion_mnist idx dir or tfds data_dir ("" default)
  c.data.tarball = ""  # path to cifar-10-python.tar.gz (trusted input)
  c.data.resolution = 0  # 0 = native (28 Fashion-MNIST, 32 CIFAR-10)
  c.data.partition = "iid"  # iid | dirichlet | shards
  c.data.dirichlet_alpha = 0.5
  c.data.labels_per_client = 2
  c.data.max_train = 0 if paper else 6000  # 0 = all
  c.data.num_test = 10000 if paper else 1000  # reference images for FID/KID

  c.model = ml_collections.ConfigDict()
  c.model.ch = 128 if paper else 32
  c.model.ch_mult = (1, 2, 2, 2) if paper else (1, 2, 2)
  c.model.num_res_blocks = 2 if paper else 1
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.1
  c.model.num_groups = 32 if paper else 8
  c.model.dtype = "bfloat16" if paper else "float32"

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.T = 1000
  c.diffusion.beta_start = 1e-4
  c.diffusion.beta_end = 0.02

  c.fed = ml_collections.ConfigDict()
  c.fed.num_clients = 10
  c.fed.clients_per_round = 10  # N = K = 10 (MODEL.md defaults)
  c.fed.local_steps = 5 if paper else 2
  c.fed.batch_size = 32 if paper else 8
  c.fed.rounds = 100 if paper else 30  # CPU: ~3 s per round (unrolled)
  c.fed.server_lr = 1.0
  # Per-round decay cap; it warms up as min(decay, (1 + r) / (10 + r)), so
  # the initial weights hold < 1% of the EMA after 10 rounds.
  c.fed.ema_decay = 0.999 if paper else 0.9
  # auto | vmap | unrolled | map: the client layout, and with it the
  # local-step unroll and the convolution form (fedqjax/federated/
  # execution.py; auto = unrolled on CPU up to 16 clients per device, then
  # map; vmap on GPU/TPU; measured in benchmarks/RESULTS.md).
  c.fed.client_loop = "auto"
  # auto: shard the client axis over every device (all hosts) when there is
  # more than one (K padded to a multiple); none: one device.
  c.fed.mesh = "auto"

  c.optim = ml_collections.ConfigDict()
  c.optim.optimizer = "adam"
  c.optim.lr = 2e-4 if paper else 1e-3
  c.optim.grad_clip = 1.0

  c.quant = ml_collections.ConfigDict()
  c.quant.method = "minmax"  # minmax | qsgd
  c.quant.bucket_size = 0  # 0 = one bucket per tensor
  c.quant.b_min = 1
  c.quant.fixed_bits = 8
  c.quant.target = "update"  # update | weights

  c.energy = ml_collections.ConfigDict()
  c.energy.radius_m = 500.0
  c.energy.shadowing_db = 8.0
  c.energy.rayleigh_fading = False
  c.energy.total_bandwidth_hz = 20e6
  c.energy.noise_psd_dbm_hz = -174.0
  c.energy.p_max_w = 0.2
  c.energy.f_min_hz = 0.1e9
  c.energy.f_max_hz = 2e9
  c.energy.tau_mean = 1e-28
  c.energy.tau_spread = 0.5
  c.energy.flops_per_cycle_choices = (8.0, 16.0, 32.0)
  c.energy.eps_choices = (1e-3, 1e-2, 5e-2, 1e-1)
  # T: deadline_s seconds if > 0, else deadline_factor x a statistic of
  # the devices' fp32 minimal round times (c n / f_max + 32 d / r(p_max)):
  # fp32_feasible = the largest (every device can deliver every scheme's
  # upload), median, or quantile (deadline_quantile; devices above it skip).
  c.energy.deadline_s = 0.0
  c.energy.deadline_rule = "fp32_feasible"
  c.energy.deadline_factor = 1.2
  c.energy.deadline_quantile = 0.95
  c.energy.infeasible_policy = "drop"  # drop | degrade

  c.eval = ml_collections.ConfigDict()
  # Held-out denoising loss (EMA and raw params) on `heldout_size` fixed
  # test images with fixed (t, noise), every `every` rounds (0: at the end
  # only); FID/KID and samples at the end.
  c.eval.every = 20 if paper else 5
  c.eval.heldout_size = 256
  # CPU: FID/KID at this budget are ~400 (the samples are still noise) and
  # cost ~2 min per run; the held-out loss above measures quality instead,
  # and 64 DDIM samples make the logged grid.
  c.eval.num_samples = 10000 if paper else 64
  c.eval.batch_size = 500 if paper else 128
  c.eval.sampler = "ddim"  # ddim | ddpm
  c.eval.ddim_steps = 100 if paper else 20
  c.eval.eta = 0.0
  c.eval.fid = paper
  c.eval.kid_subset_size = 1000 if paper else 200
  c.eval.grid = 64  # samples in the logged image grid
  # DDPM bound in bits/dim on this many test images at the end (0: off), at
  # t_stride (diffusion.vlb_bits_per_dim: ~s + T / s passes per image).
  c.eval.vlb_size = 0
  c.eval.vlb_t_stride = 32

  c.sweep = ml_collections.ConfigDict()
  # Bits schemes, each trained once per (seed, eps scale): fp32 | fixed |
  # ondemand ("naive" = ondemand priced with the "max" policy).
  c.sweep.schemes = ("fp32", "fixed", "ondemand")
  # Allocation policies priced on the same uploads inside the round.
  c.sweep.allocations = ("kkt", "deadline", "split", "max")
  c.sweep.seeds = (0,) if paper else (0, 1, 2)  # mean and 95% t-interval
  c.sweep.eps_scales = (1.0,)  # multiplies every device's error budget
  # energy_to_target: first cumulative energy at which the held-out loss
  # reaches fp32's final value x (1 + margin).
  c.sweep.target_margin = 0.02

  c.log_every = 1
  c.ckpt_every = 10
  c.max_rounds_this_run = 0  # >0: stop after that many rounds (resume tests)
  c.compilation_cache = True
  if preset == "quality":
    _quality(c)
  return c


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
