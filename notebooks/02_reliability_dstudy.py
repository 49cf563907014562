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
# # Reliability and the decision study
#
# The founding study reported the *interrater reliability at the treatment
# level* of each scale: how well the mean of the judges' scale scores,
# averaged over a subject's four rated sessions, agrees across judges. Here
# the same coefficients are posteriors (with intervals), computed from the
# model's variance components, and printed beside the classical Shrout &
# Fleiss ICCs. A decision study then asks: how many judges and sessions does
# a new trial need to reach a reliability of .80?
#
# A simulated trial has a known truth, so the posterior can be checked
# against it. Set `CALTARS_BAYES_NOTEBOOK_DRAWS` for a quick tiny run.

# %%
import os

import matplotlib.pyplot as plt

import caltars_bayes as cb
from caltars_bayes.analysis.reliability import (
    dstudy,
    judge_reliability,
    reliability,
    true_reliability,
)
from caltars_bayes.spec.instrument import models_dir

SMALL = os.environ.get("CALTARS_BAYES_NOTEBOOK_DRAWS")
if SMALL:
    DRAWS = TUNE = int(SMALL)
    CHAINS = 2
    N_SUBJECTS, N_SESSIONS, N_JUDGES = 12, 2, 3
else:
    DRAWS = TUNE = 1000
    CHAINS = 4
    N_SUBJECTS, N_SESSIONS, N_JUDGES = 52, 4, 3

inst = cb.load_instrument(models_dir() / "caltars.toml")
trial = cb.simulate_trial(
    inst, n_subjects=N_SUBJECTS, n_sessions=N_SESSIONS, n_judges=N_JUDGES, seed=21
)
fit = cb.fit_model(
    trial.to_rating_data(), draws=DRAWS, tune=TUNE, chains=CHAINS, random_seed=2,
    progressbar=False,
)  # fmt: skip
fit

# %% [markdown]
# ## Interrater reliability: posterior and classical
#
# One row per scale x level (session, treatment) x number of judges (one
# judge, the mean of the panel) x route x coefficient. The *latent* route
# uses the model's parameters directly; the *observed* route replicates the
# trial with new judges drawn from the judge population and computes the
# ICC of the replicated scale scores, which is what the classical ICC
# estimates. `classical` is Shrout & Fleiss ICC(2,.) (agreement) or ICC(3,.)
# (consistency) of the observed scores.

# %%
rel = reliability(fit)
treatment = rel[
    (rel["level"] == "treatment")
    & (rel["coefficient"] == "agreement")
    & (rel["generalizes_over"] == "judges")
]
treatment[["scale", "judges", "route", "median", "hdi_low", "hdi_high", "classical"]]

# %% [markdown]
# ### Against the truth
#
# The simulation knows every parameter, so the true coefficients can be
# computed with the same formulas (`true_reliability`). With the founding
# design the 95% HDIs should cover them for most scales.

# %%
truth = true_reliability(trial.truth, inst, routes=("latent",))
truth = truth[
    (truth["level"] == "treatment")
    & (truth["coefficient"] == "agreement")
    & (truth["generalizes_over"] == "judges")
]
merged = treatment[treatment["route"] == "latent"].merge(
    truth[["scale", "judges", "value"]], on=["scale", "judges"]
)
merged["covered"] = (merged["hdi_low"] <= merged["value"]) & (merged["value"] <= merged["hdi_high"])
merged[["scale", "judges", "median", "hdi_low", "hdi_high", "value", "covered"]]

# %% [markdown]
# ## Judges
#
# Each judge's reliability: the correlation of its scale score with the
# session's true alliance. A judge is flagged when it is credibly below the
# rest of the panel.

# %%
judge_reliability(fit)[["judge", "scale", "median", "hdi_low", "hdi_high", "flag"]]

# %% [markdown]
# ## Decision study
#
# For every posterior draw, the variance components are projected to 1-8
# judges x 1-12 sessions per subject. The smallest design is the one with the
# fewest ratings per subject that reaches .80 with posterior probability at
# least .90.

# %%
study = dstudy(fit, judges=range(1, 9), sessions=range(1, 13), target=0.8, prob=0.9)
study.smallest

# %%
fig = study.plot()
plt.show()

# %% [markdown]
# Session-level reliability (one session, the mean of the judges) is a
# different question: how many judges are needed to score a single session?

# %%
session_study = dstudy(fit, level="session")
session_study.smallest

# %% [markdown]
# `study.table` has every design with its median, band and probability of
# reaching the target; `study.save(folder)` writes it as CSV with the figure
# (PNG and SVG). From the command line: `caltars-bayes dstudy FITDIR`.

# %%
study.table.head()
