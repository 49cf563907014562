#!/usr/bin/env bash
# Download, into .whl/, the wheels the GPU machine's image lacks, at the versions
# installed in this checkout's .venv (what the tests here ran with).
#
# The device machine (lent to some sessions only; see benchmarks/gpu_results.md)
# runs the image's Python 3.12 with JAX (CUDA), numpyro, numba, numpy, scipy,
# pyarrow and matplotlib, and cannot download anything. The PyMC stack travels
# as wheels:
#
#     benchmarks/gpu_wheels.sh          # here, once (about 40 MB)
#     # then the device tool: run(command="bash benchmarks/gpu_device.sh",
#     #                           carry=[".whl"], timeout_s=600)
#
# benchmarks/gpu_device.sh installs them there and runs gpu_100x.py.
set -euo pipefail
cd "$(dirname "$0")/.."

# the PyMC stack and what it needs that the image does not have (or has older)
PKGS="pymc pytensor nutpie arviz arviz-base arviz-stats arviz-plots xarray-einstats
better-optimize cachetools xarray pandas zarr donfig numcodecs google-crc32c msgspec obstore
arro3-core platformdirs packaging typing-extensions h5netcdf"

# what the image already has that the package needs (KINDS.md of the device tool,
# read 2026-11-17); tests/test_benchmarks.py checks that PKGS and IMAGE_HAS together
# cover every runtime dependency of caltars-bayes[jax] except blackjax (its progress
# bar pulls in a web framework; the GPU run uses nutpie or numpyro)
IMAGE_HAS="numpy scipy numba llvmlite jax jaxlib numpyro matplotlib pyarrow pillow
contourpy cycler fonttools kiwisolver pyparsing python-dateutil six lazy-loader filelock
setuptools rich markdown-it-py mdurl pygments cloudpickle threadpoolctl joblib h5py
ml-dtypes opt-einsum multipledispatch tqdm tzdata pyyaml optax chex absl-py etils toolz
numpy"

[ -x .venv/bin/python ] || { echo "error: no .venv here: run 'make venv' first" >&2; exit 1; }
# shellcheck disable=SC2086  # word splitting of the package list is meant
pins=$(.venv/bin/python - $PKGS <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

pins = []
for name in sys.argv[1:]:
    try:
        pins.append(f"{name}=={version(name)}")
    except PackageNotFoundError:
        sys.exit(f"error: {name} is not installed in .venv")
print(" ".join(pins))
EOF
)
platforms=""
for n in 17 24 27 28 31 34 35; do platforms="$platforms --platform manylinux_2_${n}_x86_64"; done
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
mkdir .whl
# shellcheck disable=SC2086
.venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp $platforms --platform manylinux2014_x86_64 -d .whl $pins
echo "wheels in .whl: $(find .whl -type f -name '*.whl' | wc -l) ($(du -sh .whl | cut -f1)): $pins"
