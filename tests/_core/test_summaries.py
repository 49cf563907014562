"""describe: the vectorised summary equals xarray's reductions and ArviZ's HDI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from arviz_stats import hdi

from caltars_bayes._core.dims import CI_PROB, SAMPLE_DIMS
from caltars_bayes._core.summaries import describe


def _reference(da: xr.DataArray, prob: float = CI_PROB) -> pd.DataFrame:
    """The element-by-element summary describe replaced (xarray reductions, ArviZ HDI)."""
    stats = xr.Dataset(
        {
            "mean": da.mean(SAMPLE_DIMS),
            "sd": da.std(SAMPLE_DIMS, ddof=1),
            "median": da.median(SAMPLE_DIMS),
        }
    )
    h = hdi(da, prob=prob)
    stats["hdi_low"] = h.sel(ci_bound="lower", drop=True)
    stats["hdi_high"] = h.sel(ci_bound="upper", drop=True)
    if set(da.dims) <= set(SAMPLE_DIMS):
        return pd.DataFrame({k: [float(stats[k])] for k in stats.data_vars})
    return stats.to_dataframe()[["mean", "sd", "median", "hdi_low", "hdi_high"]]


@pytest.mark.parametrize("draws", [301, 300])  # odd and even: the median's two cases
def test_describe_equals_xarray_and_arviz(draws):
    rng = np.random.default_rng(4)
    x = rng.gamma(2.0, size=(3, draws, 5, 2))  # skewed: the HDI is not the central interval
    x[..., 0, 0] = np.round(x[..., 0, 0])  # ties
    x[1, 7, 2, 1] = np.nan  # one element with a NaN draw takes the element-by-element path
    da = xr.DataArray(
        x, dims=("chain", "draw", "judge", "scale"),
        coords={"judge": list("vwxyz"), "scale": ["b", "a"]},
    )  # fmt: skip
    for arr in (da, da.transpose("scale", "chain", "judge", "draw"), da.isel(judge=0, scale=1)):
        got, want = describe(arr, 0.9), _reference(arr, 0.9)
        pd.testing.assert_frame_equal(got, want, rtol=1e-12)
    assert describe(da).loc[("x", "a"), "median"] == pytest.approx(
        float(np.nanmedian(x[..., 2, 1]))
    )
