#!/usr/bin/env bash
# The prepared accelerator measurements (paper-size
# U-Net, 35.7M params). Meant for the `device` machine (one H100/H200, jax,
# flax, optax, chex, torch; no clu/TF): run from the repo root, one stage per
# call so each stays under the 10-minute command limit. Results go to $OUT.
#
#   bash benchmarks/gpu_check.sh round   # round_step (vmap) vs reference vs
#                                        # centralized, K=32, bf16 (~5 min)
#   bash benchmarks/gpu_check.sh peers   # fedqjax vs the PyTorch loop, K=8
#                                        # and K=32, float32 (~8 min)
#   bash benchmarks/gpu_check.sh drjax   # fedqjax vs DrJAX (same round with
#                                        # drjax.map_fn), K=8 and K=32, float32
#
# The drjax stage needs the pure-Python `drjax` package (0.2.1). Where the
# machine has no index, install it here first and carry the folder:
#   pip install --no-deps --target .drjax_site drjax==0.2.1
#   DRJAX_SITE=.drjax_site bash benchmarks/gpu_check.sh drjax
# Dry run on CPU with the tiny U-Net (the settings below are overridable):
#   MODEL=tiny CLIENTS=2 BATCH=2 RES=28 TIMEOUT=1800 OUT=/tmp/gc \
#     bash benchmarks/gpu_check.sh drjax
#
# PEAK (TFLOP/s for MFU) defaults to the H100 SXM bf16 dense peak, 989.
set -euo pipefail
export PYTHONPATH=.${DRJAX_SITE:+:$DRJAX_SITE}
OUT=${OUT:-/tmp/fedqjax_gpu}
mkdir -p "$OUT"
export JAX_COMPILATION_CACHE_DIR="$OUT/jax_cache"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1 || true

case "${1:-round}" in
  round)
    python -u benchmarks/round.py --model=paper --clients=32 --batch=32 \
      --local_steps=2 --dtype=bfloat16 --peak_tflops="${PEAK:-989}" \
      --client_loop=vmap --rounds=3 2>&1 | tee "$OUT/round_paper_k32.txt"
    ;;
  peers)
    for k in 8 32; do
      python -u benchmarks/peers/__main__.py --model paper --clients "$k" --rounds 2 \
        --local_steps 2 --batch 32 --peers torch --torch_device cuda --fedqjax_client_loop vmap \
        --timeout 500 --json_out "$OUT/peers_paper_k$k.json" 2>&1 \
        | tee "$OUT/peers_paper_k$k.txt"
    done
    ;;
  drjax)
    # One driver call: fedqjax and DrJAX (client program of fedqjax's vmap
    # layout on this backend) per K; parameters after round 1 compared.
    python -u benchmarks/peers/__main__.py --model "${MODEL:-paper}" \
      --clients "${CLIENTS:-8,32}" --rounds 2 --local_steps 2 \
      --batch "${BATCH:-32}" --res "${RES:-32}" --peers drjax \
      --fedqjax_client_loop "${CLIENT_LOOP:-auto}" --skip_reference \
      --timeout "${TIMEOUT:-280}" --logdir "$OUT/drjax_logs" --json_out "$OUT/drjax.json" \
      2>&1 | tee "$OUT/drjax.txt"
    ;;
  *)
    echo "usage: $0 round|peers|drjax" >&2
    exit 2
    ;;
esac
