"""Layer 6 (beside report and scoring): many-fit studies on Dask: planning and SBC."""
