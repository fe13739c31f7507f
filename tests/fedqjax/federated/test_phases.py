"""Tests for fedqjax.federated.phases: the skip rule, policy "degrade", and
the server side (aggregation, EMA) against numpy by hand."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqjax import federated as fed
from fedqjax import quantization as Q
from fedqjax.federated import phases
from tests.support import federated as H


def test_screen_uses_the_scheme_smallest_payload(params, devices):
  """The skip rule by hand on a feasibility table."""
  spec = H.make_spec(**H.LAYOUTS["vmap_k3"])
  ok = jnp.asarray(np.arange(1, 33)[None, :] <= np.array([[32], [8], [0]]))
  for name, want in (
    ("fp32", [False, True, True]),
    ("fixed", [False, False, True]),
    ("ondemand", [False, False, True]),
  ):
    got = phases.screen(ok, fed.make_scheme(name, deadline_s=1.0), spec)
    np.testing.assert_array_equal(np.asarray(got), want, name)
  np.testing.assert_array_equal(
    np.asarray(phases.degrade(jnp.int32(20), ok[1], 1)), 8
  )


def test_degrade_is_the_largest_deliverable_bits():
  """Policy "degrade" against a brute force on random feasibility rows: the
  largest deliverable b in [b_min, requested], else min(b_min, requested)."""
  rng = np.random.default_rng(8)
  ok = rng.random((500, 32)) < rng.uniform(0.05, 0.9, (500, 1))
  requested = rng.integers(1, 33, 500)
  got = np.asarray(
    jax.vmap(lambda r, o: phases.degrade(r, o, 3))(
      jnp.asarray(requested, jnp.int32), jnp.asarray(ok)
    )
  )
  for i in range(500):
    allowed = [b for b in range(3, requested[i] + 1) if ok[i, b - 1]]
    assert got[i] == (max(allowed) if allowed else min(3, requested[i])), i
  assert (got < requested).any() and (got == requested).any()


# -- aggregate and update_ema against numpy, by hand ---------------------------
# A three-leaf template (no U-Net: nothing compiles but these small phases).
# The flat layout is the quantizer's documented one: leaves in tree order,
# each raveled, concatenated.
TEMPLATE = {
  "conv": {"kernel": np.zeros((2, 3), np.float32), "bias": np.zeros(3)},
  "scale": np.zeros(4, np.float32),
}
COUNTS = np.array([3.0, 7.0, 12.0, 5.0])  # unequal n_k
UPLOADED = np.array([True, True, True, False])  # slot 3: trained, not sent


def _small_spec(**kw):
  template = jax.tree.map(lambda x: np.asarray(x, np.float32), TEMPLATE)
  return fed.RoundSpec(
    unet=H.TINY,
    quantizer=Q.make_quantizer(template),
    num_clients=4,
    clients_per_round=4,
    **kw,
  )


def _tree(rng):
  return jax.tree.map(
    lambda x: jnp.asarray(rng.normal(size=np.shape(x)), jnp.float32), TEMPLATE
  )


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize("target", ["update", "weights"])
@pytest.mark.parametrize("server_lr", [1.0, 0.3])
def test_aggregate_is_the_sample_weighted_mean_by_hand(target, server_lr):
  """w + lr sum_k m_k n_k Q_k / sum_k m_k n_k for deltas; w + lr (that
  mean - w) for weights; in float64 numpy. Unequal n_k: uniform weights
  move the mean by ~0.3 per entry; the non-uploader's Q (1e3) must not
  enter; `p + lr * a` for weights is off by lr |w| ~ 0.3-1. Tolerance: the
  float32 rounding of a 3-term sum (1e-6 relative)."""
  rng = np.random.default_rng(37)
  spec = _small_spec(target=target, server_lr=server_lr)
  w = _tree(rng)
  deq = rng.normal(size=(4, 13)).astype(np.float32)
  deq[3] = 1e3  # the non-uploader's upload, masked out by its zero weight
  weight = np.where(UPLOADED, COUNTS, 0.0)
  got = jax.jit(functools.partial(phases.aggregate, spec=spec))(
    w, jnp.asarray(deq), jnp.asarray(weight, jnp.float32)
  )
  flat_w, d64 = _flat(w).astype(np.float64), deq.astype(np.float64)
  mean = (weight[:, None] * d64).sum(0) / weight.sum()
  step = mean if target == "update" else mean - flat_w
  np.testing.assert_allclose(
    _flat(got), flat_w + server_lr * step, rtol=1e-6, atol=1e-6
  )
  assert jax.tree.structure(got) == jax.tree.structure(w)


@pytest.mark.parametrize("target", ["update", "weights"])
def test_aggregate_keeps_the_params_when_nobody_uploaded(target):
  """All weights 0: w exactly (for "weights", a missing guard would give
  (1 - lr) w)."""
  rng = np.random.default_rng(1)
  spec = _small_spec(target=target, server_lr=0.5)
  w = _tree(rng)
  got = phases.aggregate(
    w,
    jnp.asarray(rng.normal(size=(4, 13)), jnp.float32),
    jnp.zeros(4, jnp.float32),
    spec,
  )
  np.testing.assert_array_equal(_flat(got), _flat(w))


def test_update_ema_follows_the_warmup_schedule_by_hand():
  """decay_r = min(cap, (1 + r) / (warmup + r)) at round r; with cap 0.75
  and warm-up 3: 1/3, 1/2, 3/5, 2/3, 5/7, then the cap from r = 5 on
  (6/8 = 0.75). e_{r+1} = decay_r e_r + (1 - decay_r) w_{r+1}, in float64
  numpy over 8 rounds. A swapped decay (1 - decay) is off by ~0.3 |e - w|
  in round 0."""
  rng = np.random.default_rng(2)
  spec = _small_spec(ema_decay=0.75, ema_warmup=3.0)
  step = jax.jit(functools.partial(phases.update_ema, spec=spec))
  ema = _tree(rng)
  want = _flat(ema).astype(np.float64)
  decays = [min(0.75, (1 + r) / (3 + r)) for r in range(8)]
  assert decays[:5] == pytest.approx([1 / 3, 1 / 2, 3 / 5, 2 / 3, 5 / 7])
  assert decays[5:] == [0.75] * 3
  for r, d in enumerate(decays):
    w = _tree(rng)
    ema = step(ema, w, jnp.int32(r))
    want = d * want + (1 - d) * _flat(w)
    np.testing.assert_allclose(_flat(ema), want, rtol=1e-6, atol=1e-6)


def test_update_ema_default_first_round_keeps_a_tenth():
  """The defaults (cap 0.999, warm-up 10): round 0 decays by 1/10, so the
  EMA is 0.1 e + 0.9 w; at round 10^4 the cap 0.999 holds."""
  rng = np.random.default_rng(3)
  spec = _small_spec()
  e, w = _tree(rng), _tree(rng)
  for r, d in ((0, 0.1), (10_000, 0.999)):
    got = phases.update_ema(e, w, jnp.int32(r), spec)
    np.testing.assert_allclose(
      _flat(got), d * _flat(e) + (1 - d) * _flat(w), rtol=1e-6, atol=1e-6
    )
