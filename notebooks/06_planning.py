# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Planning a trial by simulation
#
# How many subjects, sessions and judges does a new alliance study need? A
# plan (a TOML file, see `models/plan-example.toml`) names candidate designs,
# the effect sizes to assume and what counts as success (e.g. a hypothesis
# supported, a reliability interval above .80). Each design is simulated many
# times from the model's own generative process, every simulated trial is
# fitted, and the share of successes is the design's power (with a Monte
# Carlo interval). Fits run in parallel, on local processes or a dask
# cluster.
#
# A full plan fits hundreds of models (hours on a laptop, minutes on a
# cluster). With `CALTARS_BAYES_NOTEBOOK_DRAWS` set, the plan is shrunk to a
# token run: two replications of the smallest design with few draws, just to
# show the calls.

# %%
import dataclasses
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from caltars_bayes.spec.instrument import models_dir
from caltars_bayes.studies.planning import load_plan, run_plan

SMALL = os.environ.get("CALTARS_BAYES_NOTEBOOK_DRAWS")
WORK = Path(tempfile.mkdtemp(prefix="caltars_planning_"))

plan = load_plan(models_dir() / "plan-example.toml")
plan

# %% [markdown]
# In the quick run the plan keeps its first design only, with one
# replication per effect, few draws, and runs in this process (`scheduler="serial"`);
# otherwise the replications run on a local dask cluster, one worker per core.

# %%
if SMALL:
    plan = dataclasses.replace(
        plan, designs=plan.designs[:1], replications=1, draws=int(SMALL), tune=int(SMALL)
    )
plan

# %%
result = run_plan(plan, WORK / "plan", scheduler="serial" if SMALL else None, progress=False)
result.power

# %%
fig = result.plot()
plt.show()

# %% [markdown]
# From the command line: `caltars-bayes plan models/plan-example.toml --out
# plan_results/` (add `--workers N` or a dask scheduler address).
