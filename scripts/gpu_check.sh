#!/usr/bin/env bash
# The prepared device check: one call on a machine with a GPU, ~5-8 minutes.
#   bash scripts/gpu_check.sh [OUT_DIR]     (default: $OUT, else ./device-check)
# Installs the project without dependencies (the machine has jax with CUDA, flax, optax,
# orbax), prints the versions, then runs `python scripts/bench.py --device-check` (see
# benchmarks/device_check.py): everything lands in OUT_DIR/device_check.json and
# OUT_DIR/device_check.log.
# The Nietzsche corpus must be reachable: CHARJAX_DATA_DIR, the cache, or a download.
set -u
out="${1:-${OUT:-device-check}}"
mkdir -p "$out"
# No network there: no build isolation. The source tree also goes first on the path, so the
# check runs even where the install fails or lands in another interpreter's site-packages.
python -m pip install --no-deps --no-build-isolation -e . > "$out/install.log" 2>&1 \
  || echo "install failed (see $out/install.log): running from the source tree"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())" 2>&1 | tee "$out/versions.txt"
python scripts/bench.py --device-check "$out" 2>&1 | tee "$out/device_check.log"
