#!/usr/bin/env bash
# The GPU run in one device call (see benchmarks/gpu_wheels.sh for the wheels):
#
#     run(command="bash benchmarks/gpu_device.sh", carry=[".whl"], timeout_s=600)
#
# Installs the carried wheels over the image's Python (JAX with CUDA, numpyro and
# numba stay the image's), records the card and the versions, then runs
# gpu_100x.py (100x the founding design, 4 x (1000 + 1000)) under a time limit
# (LIMIT seconds, default 540) that leaves time for the files to come back.
# Extra arguments go to gpu_100x.py. Everything lands in $OUT: card.txt,
# log.txt and, when the fit finishes, gpu_results.json and gpu_results.md.
# Environment: PYTHON (default python3), WHEELS (default .whl), SITE (where they
# are installed, default /tmp/site), LIMIT, OUT (default /tmp/gpu_out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
t0=$(date +%s)
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl || { echo "error: installing $WHEELS failed" >&2; exit 1; }
    export PYTHONPATH=$SITE:$PWD
else
    echo "note: no wheels in $WHEELS; using $PY as it is" >&2
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "no nvidia-smi"; } | tee "$OUT/card.txt"
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT/card.txt" || exit 1
from importlib.metadata import version

import jax

print("jax devices:", jax.devices())
for name in ("jax", "jaxlib", "numpyro", "numba", "numpy", "scipy", "pandas", "xarray",
             "pymc", "pytensor", "nutpie", "arviz-stats"):
    print(f"{name} {version(name)}")
# everything the run imports, now rather than minutes into it
import arviz  # noqa: E402,F401
import nutpie  # noqa: E402,F401
import numpyro  # noqa: E402,F401
import pymc  # noqa: E402,F401
import pymc.sampling.jax  # noqa: E402,F401

import caltars_bayes  # noqa: E402,F401
EOF
echo "[$(($(date +%s) - t0)) s] set up; running gpu_100x.py $*"
timeout "${LIMIT:-540}" "$PY" benchmarks/gpu_100x.py --progress --out "$OUT/gpu_results" "$@" 2>&1 \
    | grep --line-buffered -v "warnings.warn\|UserWarning: PyTensor could not link\|conda/mamba\|experimental backend\|troubleshooting.html" \
    | tee "$OUT/log.txt"
rc=${PIPESTATUS[0]}
echo "[$(($(date +%s) - t0)) s] gpu_100x.py exit status $rc (124: stopped by the time limit)"
exit "$rc"
