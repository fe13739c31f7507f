"""Type aliases shared across fedqjax."""

from typing import Any

import jax

PyTree = Any
Params = Any  # a flax parameter pytree
PRNGKey = jax.Array  # typed (jax.random.key) or raw uint32[2] keys are accepted
Array = jax.Array
ArrayLike = jax.typing.ArrayLike
