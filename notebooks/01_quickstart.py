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
# # Quickstart: from a ratings file to the main tables
#
# Judges rated therapy sessions on the items of an observer-rated alliance
# instrument (here the CALTARS: 30 items, five scales, ratings 1-5).
# `caltars_bayes` fits **one** Bayesian model to every single rating: each
# subject's alliance on each scale, each session's deviation from it, each
# judge's severity and discrimination, each item's loading and thresholds.
#
# This notebook
#
# 1. writes a simulated trial to CSV files (in your work they are your data),
# 2. reads them with a data report that accounts for every row,
# 3. fits the model and checks convergence,
# 4. reads the main tables: parameters, alliance scores, judges, reliability,
# 5. writes the full report.
#
# **Small settings.** With the environment variable
# `CALTARS_BAYES_NOTEBOOK_DRAWS` set (CI does), the notebook uses a tiny trial
# and that many draws, so it runs in seconds; the numbers are then not worth
# reading and the fit will say it did not converge. Unset, it analyses a trial
# of the founding study's size (52 subjects x 4 sessions x 3 judges) with 4
# chains x 1000 draws, a few minutes.

# %%
import os
import tempfile
from pathlib import Path

import caltars_bayes as cb
from caltars_bayes.analysis.reliability import reliability
from caltars_bayes.report.build import build_report
from caltars_bayes.spec.instrument import models_dir

SMALL = os.environ.get("CALTARS_BAYES_NOTEBOOK_DRAWS")
if SMALL:  # a quick run-through: tiny trial, few draws
    DRAWS = TUNE = int(SMALL)
    CHAINS = 2
    N_SUBJECTS, N_SESSIONS, N_JUDGES = 12, 2, 2
else:  # the founding study's design, full sampling
    DRAWS = TUNE = 1000
    CHAINS = 4
    N_SUBJECTS, N_SESSIONS, N_JUDGES = 52, 4, 3
WORK = Path(tempfile.mkdtemp(prefix="caltars_quickstart_"))
WORK

# %% [markdown]
# ## 1. Data
#
# The instrument spec says which item belongs to which scale, the response
# range and any reverse-keyed items (`models/caltars.toml`; copy and edit it
# for your version of the instrument).

# %%
inst = cb.load_instrument(models_dir() / "caltars.toml")
inst.scale_codes, len(inst.items), (inst.response_min, inst.response_max)

# %% [markdown]
# A simulated trial stands in for real data. `trial.write` writes the files a
# study would have: long ratings (`subject, session, judge, item, rating`), a
# subject covariate table and a session covariate table.

# %%
trial = cb.simulate_trial(
    inst, n_subjects=N_SUBJECTS, n_sessions=N_SESSIONS, n_judges=N_JUDGES, seed=11
)
trial.write(WORK / "trial")
(WORK / "trial" / "ratings.csv").read_text().splitlines()[:4]

# %% [markdown]
# Reading validates every row; the report says what was used, missing and
# rejected, and how judges and sessions are crossed. Your own column names are
# mapped with `columns={"patient": "subject", "rater": "judge"}`.

# %%
data = cb.RatingData.from_files(WORK / "trial" / "ratings.csv", inst)
print(data.report)

# %% [markdown]
# ## 2. Fit
#
# `fit_model` samples the posterior with NUTS (nutpie). The fit shows its
# convergence verdict first: R-hat, effective sample sizes, divergences,
# E-BFMI and tree depth, all checked on every reported parameter.

# %%
fit = cb.fit_model(data, draws=DRAWS, tune=TUNE, chains=CHAINS, random_seed=1, progressbar=False)
fit

# %%
print(fit.diagnostics)

# %% [markdown]
# ## 3. The main tables
#
# Every table is a pandas DataFrame with a `converged` column, so the verdict
# survives export to CSV or Excel. Intervals are 95% highest-density intervals.

# %%
fit.summary(["sd_alliance", "sd_session", "factor_corr"])

# %% [markdown]
# Alliance scores per subject (treatment level) and per session:

# %%
scores = fit.scores()
scores[scores["level"] == "subject"].head(10)

# %% [markdown]
# Judges: severity per scale (higher: rates lower) and discrimination (how
# sharply the ratings track alliance; 1 is the average judge).

# %%
fit.judges()

# %% [markdown]
# Reliability as a posterior, beside the classical Shrout & Fleiss ICC of the
# observed scale scores. The founding study's number is the treatment-level
# interrater reliability of the mean of the judges:

# %%
rel = reliability(fit)
rel[
    (rel["level"] == "treatment")
    & (rel["coefficient"] == "agreement")
    & (rel["generalizes_over"] == "judges")
    & (rel["route"] == "observed")
][["scale", "judges", "median", "hdi_low", "hdi_high", "classical", "converged"]]

# %% [markdown]
# The posterior itself is an xarray Dataset with named dimensions, e.g. the
# draws of the correlation between the patient and therapist positive
# contribution scales:

# %%
fit.posterior["factor_corr"].sel(scale="PPC", scale2="TPC").quantile([0.025, 0.5, 0.975])

# %% [markdown]
# ## 4. Save, reload, report
#
# `save_fit_directory` writes what `caltars-bayes fit` writes: the reloadable
# core (the posterior as netCDF, the data, the spec, the fit's record) and every
# table and figure; it returns the tables. `fit.save` writes the core alone.
# Loading checks that nothing was edited since.

# %%
results = cb.save_fit_directory(fit, WORK / "fit", force=True)
fit = cb.load_fit(WORK / "fit")
sorted(p.name for p in (WORK / "fit").iterdir())

# %% [markdown]
# The report collects everything (data, convergence, structure, reliability,
# judges, decision study, predictive checks, a methods paragraph) and renders
# as one self-contained HTML file, markdown, or LaTeX tables. In a notebook it
# also shows itself inline. From the command line:
# `caltars-bayes report FITDIR --format html`.

# %%
report = build_report(fit, results=results)  # reuses the tables just written
report.to_html(WORK / "report.html", force=True)
print("\n".join(report.summary))
print(report.methods)
