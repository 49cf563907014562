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
# # Scoring a new trial with a calibrated instrument
#
# A large, carefully rated trial *calibrates* the instrument: it pins down the
# item loadings and thresholds and the population of judges. A later, smaller
# trial can then be scored with that calibration, without refitting the
# measurement model: each new session and subject gets a posterior alliance
# score on the same scale as the calibration trial, with an interval that
# carries the calibration's uncertainty.
#
# Set `CALTARS_BAYES_NOTEBOOK_DRAWS` for a quick tiny run.

# %%
import os
import tempfile
from pathlib import Path

import caltars_bayes as cb
from caltars_bayes.scoring.calibration import calibrate, load_calibration
from caltars_bayes.scoring.trial import score
from caltars_bayes.spec.instrument import models_dir

SMALL = os.environ.get("CALTARS_BAYES_NOTEBOOK_DRAWS")
if SMALL:
    DRAWS = TUNE = int(SMALL)
    CHAINS = 2
    N_SUBJECTS, N_SESSIONS, N_JUDGES = 12, 2, 2
    N_NEW = 4
else:
    DRAWS = TUNE = 1000
    CHAINS = 4
    N_SUBJECTS, N_SESSIONS, N_JUDGES = 52, 4, 3
    N_NEW = 12
WORK = Path(tempfile.mkdtemp(prefix="caltars_scoring_"))

inst = cb.load_instrument(models_dir() / "caltars.toml")

# %% [markdown]
# ## 1. Calibrate on the first trial

# %%
calib_trial = cb.simulate_trial(
    inst, n_subjects=N_SUBJECTS, n_sessions=N_SESSIONS, n_judges=N_JUDGES, seed=51
)
fit = cb.fit_model(
    calib_trial.to_rating_data(), draws=DRAWS, tune=TUNE, chains=CHAINS, random_seed=5,
    progressbar=False,
)  # fmt: skip
fit

# %% [markdown]
# The calibration keeps what a new trial needs from the posterior (item
# parameters, judge populations, scale SDs and correlations) and the
# convergence verdict of the fit it came from. It is saved as a folder and
# loaded back (no pickle).

# %%
calibration = calibrate(fit)
calibration.save(WORK / "calibration")
calibration = load_calibration(WORK / "calibration")
calibration

# %% [markdown]
# ## 2. Score a new trial
#
# The new trial has its own subjects and its own judges (renamed `new_J1`,
# ...: judges not in the calibration get the calibrated judge population as
# their prior and are estimated from their ratings; a judge with a calibrated
# name would keep its calibrated severity and discrimination). The scores
# table has the same columns as `scores.csv` of a fit: one row per subject x
# scale (treatment level) and per session x scale.

# %%
new_trial = cb.simulate_trial(inst, n_subjects=N_NEW, n_sessions=2, n_judges=2, seed=52)
new_ratings = new_trial.ratings.assign(judge="new_" + new_trial.ratings["judge"])
new_data = cb.RatingData.from_frame(new_ratings, inst, layout="long")
scores = score(new_data, calibration)
scores.head(10)

# %% [markdown]
# How close are the scores to the new trial's true alliance? (The
# calibration's scale origin is the calibration sample's average subject, so
# compare by correlation.)

# %%
subject_scores = scores[scores["level"] == "subject"]
true = new_trial.truth["theta"].to_dataframe("true").reset_index()
merged = subject_scores.merge(true, on=["subject", "scale"])
merged.groupby("scale")[["mean", "true"]].corr().xs("mean", level=1)["true"]

# %% [markdown]
# From the command line: `caltars-bayes score new_ratings.csv --calibration
# calibration/ --out new_scores.csv`.
