"""One client's local DDPM training (I optimizer steps), written for ONE
client and lifted over the client axis by the round (execution.py).

FedAvg (McMahan et al. 2017, arXiv 1602.05629) with local DDPM steps as in
arXiv 2403.04430, section "federated diffusion training".
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
import optax

from fedqjax.diffusion import make_train_step
from fedqjax.diffusion import schedule as schedule_lib
from fedqjax.federated.spec import RoundSpec
from fedqjax.typing import Array, Params, PRNGKey


def make_optimizer(spec: RoundSpec) -> optax.GradientTransformation:
  """Client optimizer; state is fresh each round (stateless clients)."""
  opt = optax.adam(spec.lr) if spec.optimizer == "adam" else optax.sgd(spec.lr)
  if spec.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(spec.grad_clip), opt)
  return opt


def make_schedule(spec: RoundSpec) -> schedule_lib.NoiseSchedule:
  return schedule_lib.linear_schedule(spec.T, spec.beta_start, spec.beta_end)


def draw_batch(
  images: Array, count: Array, key: PRNGKey, batch_size: int
) -> Array:
  """B samples of one client, uniformly with replacement among its `count`.

  Args:
    images: [n_max, H, W, C] padded client data.
    count: scalar int, the client's true number of samples (>= 1).
  Returns:
    [B, H, W, C]
  """
  idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(count, 1))
  return jnp.take(images, idx, axis=0)


def client_update(
  params: Params, images: Array, count: Array, key: PRNGKey, *, spec: RoundSpec
) -> Tuple[Params, Array]:
  """I local optimizer steps of the DDPM loss from the global params.

  Each step is `fedqjax.diffusion.make_train_step`'s (the centralized
  trainer's) on a minibatch drawn from this client's padded data.

  Args:
    params: global variables {'params': ...} (shared by all clients).
    images: [n_max, H, W, C] this client's padded data in [-1, 1].
    count: scalar int32, n_k.
    key: this client's key for this round.
    spec: static round settings.

  Returns:
    (local params w_k after I steps, mean loss over the I steps).
  """
  opt = make_optimizer(spec)
  train_step = make_train_step(spec.model.apply, opt, make_schedule(spec))

  def step(carry, k):
    k_batch, k_loss = jax.random.split(k)
    x0 = draw_batch(images, count, k_batch, spec.batch_size)
    return train_step(carry, x0, k_loss)

  keys = jax.random.split(key, spec.local_steps)
  (p, _), step_losses = jax.lax.scan(
    step, (params, opt.init(params)), keys, unroll=spec.execution.local_unroll
  )
  return p, jnp.mean(step_losses)
