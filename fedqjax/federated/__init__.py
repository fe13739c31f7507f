"""The federated round engine: one compiled round for all K clients."""

from fedqjax.federated.client import client_update, draw_batch, make_optimizer
from fedqjax.federated.execution import (
  AUTO_MAX_UNROLLED,
  CLIENT_LOOPS,
  Execution,
  map_clients,
  resolve_execution,
)
from fedqjax.federated.phases import select_participants
from fedqjax.federated.round import jit_round_step, round_step
from fedqjax.federated.sharding import (
  client_mesh,
  num_shards,
  padded_clients,
  replicate,
  shard_clients,
  to_host,
)
from fedqjax.federated.spec import BITS_SCHEMES, RoundSpec, Scheme, make_scheme
from fedqjax.federated.state import (
  FedData,
  ServerState,
  client_keys,
  init_server_state,
  round_keys,
)
