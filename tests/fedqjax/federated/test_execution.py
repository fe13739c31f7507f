"""Tests for fedqjax.federated.execution: the client loop is resolved in one place."""

import pytest

from fedqjax import federated as fed
from tests.support import federated as H


def test_client_loop_resolved_in_one_place():
  r = fed.resolve_execution
  assert r("auto", "cpu", 8) == fed.Execution("unrolled", True, "xla")
  assert r("auto", "cpu", fed.AUTO_MAX_UNROLLED + 1) == fed.Execution(
    "map", 1, "im2col"
  )
  assert r("vmap", "cpu") == fed.Execution("vmap", 1, "im2col")
  assert r("auto", "gpu", 64) == fed.Execution("vmap", True, "xla")
  assert r("auto", "tpu") == fed.Execution("vmap", True, "xla")
  with pytest.raises(ValueError, match="client_loop.*auto"):
    r("chunked", "cpu")
  spec = H.make_spec(loop="map")
  assert spec.model.config.conv_impl == "im2col"
