"""Tests for fedqjax.federated.spec: RoundSpec and Scheme validation."""

import pytest

from fedqjax import federated as fed
from tests.support import federated as H


def test_bad_spec_values_name_their_field():
  with pytest.raises(ValueError, match=r"RoundSpec\.clients_per_round=5"):
    H.make_spec(n=4, k=5)
  with pytest.raises(ValueError, match=r"RoundSpec\.allocations"):
    H.make_spec(allocations=("kkt", "cheapest"))
  with pytest.raises(ValueError, match=r"RoundSpec\.infeasible_policy"):
    H.make_spec(infeasible_policy="retry")
  with pytest.raises(ValueError, match=r"Scheme\.bits='int4'"):
    fed.make_scheme("int4", deadline_s=1.0)
  with pytest.raises(ValueError, match=r"Scheme\.deadline_s=-1"):
    fed.make_scheme("fp32", deadline_s=-1.0)
  with pytest.raises(ValueError, match=r"Scheme\.eps_scale=nan"):
    fed.make_scheme("fp32", deadline_s=1.0, eps_scale=float("nan"))
