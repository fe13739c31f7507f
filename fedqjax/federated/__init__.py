"""The federated round engine: one compiled round for all K clients."""
from fedqjax.federated.client import client_update, draw_batch, make_optimizer
from fedqjax.federated.reference import round_step_reference
from fedqjax.federated.round import (FedData, ServerState, allocate_all,
                                     choose_bits, init_server_state,
                                     jit_round_step, map_clients,
                                     round_keys, round_step,
                                     select_participants)
from fedqjax.federated.sharding import (client_mesh, replicate, shard_clients,
                                        to_host)
from fedqjax.federated.spec import (PARALLELISM, SCHEMES, RoundSpec, Scheme,
                                    make_scheme, resolve_parallelism)
