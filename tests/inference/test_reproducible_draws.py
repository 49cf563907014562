"""Same seed, same draws: a model compiled in this process, loaded from the disk
cache by another process, or reused with new data (issue 28, item 3).

Within one process the three paths run the same machine code; across processes
they did not while PyTensor's numba code had fast math on (a process that
compiled the model and one that loaded it gave different draws from the same
seed), so the compiling process here is a separate one.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from caltars_bayes.inference import nutpie_cache
from caltars_bayes.inference.nutpie_cache import compile_numba_model

HERE = Path(__file__).parent

_COMPILE_AND_SAMPLE = textwrap.dedent(
    """
    import sys
    import numpy as np
    import nutpie
    import pytensor.link.numba.cache as cache
    cache.NUMBA_CACHE_PATH = type(cache.NUMBA_CACHE_PATH)(sys.argv[1])
    sys.path.insert(0, sys.argv[2])
    from test_nutpie_cache import _logp, _sizes_model
    from caltars_bayes.inference.nutpie_cache import compile_numba_model
    compiled, info = compile_numba_model(_sizes_model(40, 3, 2, prior_sd=float(sys.argv[3])))
    post = nutpie.sample(compiled, draws=200, tune=200, chains=2, seed=9, progress_bar=False)
    grads = [_logp(compiled, x)[1] for x in np.load(sys.argv[5])]
    np.savez(sys.argv[4], draws=post.posterior["beta"].values, grads=np.array(grads))
    print(info.source)
    """
)


def _draws(compiled) -> np.ndarray:
    import nutpie

    post = nutpie.sample(compiled, draws=200, tune=200, chains=2, seed=9, progress_bar=False)
    return post.posterior["beta"].values


def _points(n_dim: int) -> np.ndarray:
    """Points of every scale: fast math changed gradients mostly where |x| >= 3."""
    rng = np.random.default_rng(0)
    return np.array([rng.normal(scale=s, size=n_dim) for s in (0.1, 1, 3, 10) for _ in range(30)])


@pytest.mark.slow
def test_same_draws_whether_compiled_in_another_process_loaded_or_reused(
    tmp_path, monkeypatch
):
    """About 50 s: a process with empty caches compiles the model and samples;
    this process loads it from that disk cache, then reuses it after another
    size; all three give the same gradients at 120 points and the same draws.

    The caches must be empty: with fast math on, a process that found PyTensor's
    generic op functions already cached gave the same draws as one that loaded
    the model, and one that compiled them too did not."""
    import pytensor.link.numba.cache as cache
    from test_nutpie_cache import _logp, _sizes_model

    (tmp_path / "numba_cache").mkdir()
    monkeypatch.setattr(cache, "NUMBA_CACHE_PATH", tmp_path / "numba_cache")
    prior_sd = 8.0
    out, at = tmp_path / "elsewhere.npz", tmp_path / "points.npy"
    points = _points(2 + 3 - 1 + 1)  # beta, u (zero-sum: one value dropped), sigma
    np.save(at, points)
    run = subprocess.run(
        [sys.executable, "-c", _COMPILE_AND_SAMPLE, str(cache.NUMBA_CACHE_PATH), str(HERE),
         repr(prior_sd), str(out), str(at)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-1] == "compiled"
    elsewhere = np.load(out)
    nutpie_cache.clear_compiled()
    loaded, info = compile_numba_model(_sizes_model(40, 3, 2, prior_sd=prior_sd))
    assert info.source == "disk cache"
    assert loaded.n_dim == points.shape[1]
    grads = np.array([_logp(loaded, x)[1] for x in points])
    np.testing.assert_array_equal(grads, elsewhere["grads"])
    compiled_elsewhere = elsewhere["draws"]
    np.testing.assert_array_equal(_draws(loaded), compiled_elsewhere)
    compile_numba_model(_sizes_model(25, 4, 3, prior_sd=prior_sd))  # another size between
    reused, info = compile_numba_model(_sizes_model(40, 3, 2, prior_sd=prior_sd))
    assert info.source == "reused"
    np.testing.assert_array_equal(_draws(reused), compiled_elsewhere)
    nutpie_cache.clear_compiled()
