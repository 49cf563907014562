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
# # Construct validity: the founding study's hypotheses
#
# Marmar, Weiss and Gaston (1989) hypothesised that the scales of positive
# contribution to the alliance relate positively to educational attainment,
# motivation, pretreatment interpersonal functioning, patient experiencing in
# therapy, symptom improvement and interpersonal gains, and negatively to
# stressful life events and to the therapist's emphasis on resistances; that
# the negative-contribution scales relate positively to that emphasis; and
# that alliance is largely independent of pretreatment symptoms. They tested
# these with Pearson correlations of observed scale scores.
#
# Here the covariates are modelled jointly with the latent alliance, so each
# association is a posterior of the *latent* correlation, corrected for the
# measurement error of the ratings, and each hypothesis gets a verdict from
# posterior probabilities (`models/caltars-1989-hypotheses.toml`). The trial
# is simulated with known correlations (`FOUNDING_SUBJECT_COVARIATES`), so
# the posterior can be checked against the truth, and the classical
# correlations are printed beside it.
#
# Set `CALTARS_BAYES_NOTEBOOK_DRAWS` for a quick tiny run.

# %%
import os

import matplotlib.pyplot as plt
import pandas as pd

import caltars_bayes as cb
from caltars_bayes.analysis.associations import associations, plot_associations
from caltars_bayes.analysis.validity import summarise_verdicts, test_hypotheses
from caltars_bayes.spec.hypotheses import load_hypotheses
from caltars_bayes.spec.instrument import models_dir

SMALL = os.environ.get("CALTARS_BAYES_NOTEBOOK_DRAWS")
if SMALL:
    DRAWS = TUNE = int(SMALL)
    CHAINS = 2
    N_SUBJECTS, N_SESSIONS, N_JUDGES = 14, 2, 2
else:
    DRAWS = TUNE = 1000
    CHAINS = 4
    N_SUBJECTS, N_SESSIONS, N_JUDGES = 52, 4, 3

inst = cb.load_instrument(models_dir() / "caltars.toml")
trial = cb.simulate_trial(
    inst,
    n_subjects=N_SUBJECTS,
    n_sessions=N_SESSIONS,
    n_judges=N_JUDGES,
    subject_covariates=cb.FOUNDING_SUBJECT_COVARIATES,
    session_covariates=cb.FOUNDING_SESSION_COVARIATES,
    seed=41,
)
trial.covariates.head()

# %% [markdown]
# ## The hypotheses
#
# A hypothesis names scales, a covariate and a direction. A directional
# hypothesis is *supported* when the posterior probability of the expected
# sign is at least .95, *contradicted* when that of the opposite sign is, and
# otherwise *inconclusive*; a null hypothesis is supported when
# P(|r| < .10) >= .95.

# %%
hyps = load_hypotheses(models_dir() / "caltars-1989-hypotheses.toml")
pd.DataFrame([h.__dict__ for h in hyps.hypotheses])

# %%
data = trial.to_rating_data()
fit = cb.fit_model(
    data, draws=DRAWS, tune=TUNE, chains=CHAINS, random_seed=4, progressbar=False
)
fit.hypotheses = hyps  # saved with the fit and picked up by the report
fit

# %% [markdown]
# ## Associations: posterior vs classical
#
# `median` and the HDI are the latent correlation; `classical_r` is the
# Pearson r of observed scale means that the founding study would have
# reported. Measurement error pulls the classical r towards zero.

# %%
assoc = associations(fit, hypotheses=hyps)
assoc[["scale", "covariate", "level", "median", "hdi_low", "hdi_high", "p_positive",
       "classical_r", "classical_p"]].round(3)  # fmt: skip

# %% [markdown]
# Against the truth of the simulation: the correlations the trial was drawn
# with.

# %%
truth = pd.concat(
    [
        trial.truth["covariate_corr"].to_dataframe("true_r").reset_index(),
        trial.truth["session_covariate_corr"]
        .to_dataframe("true_r")
        .reset_index()
        .rename(columns={"session_covariate": "covariate"}),
    ]
)
check = assoc.merge(truth[["scale", "covariate", "true_r"]], on=["scale", "covariate"])
check["covered"] = (check["hdi_low"] <= check["true_r"]) & (check["true_r"] <= check["hdi_high"])
print(f"95% HDIs covering the true correlation: {check['covered'].mean():.0%}")
ax = check.plot.scatter("true_r", "median", label="posterior median")
check.plot.scatter("true_r", "classical_r", color="C1", marker="x", ax=ax, label="classical r")
ax.axline((0, 0), slope=1, color="grey", lw=0.8)
ax.set_xlabel("true latent correlation")
ax.set_ylabel("estimate")
ax.legend()
plt.show()

# %% [markdown]
# ## Verdicts

# %%
verdicts = test_hypotheses(fit, hyps)
print(summarise_verdicts(verdicts))
verdicts[["scale", "covariate", "direction", "median", "hdi_low", "hdi_high", "p_expected",
          "verdict", "classical_r", "classical_p"]].round(3)  # fmt: skip

# %% [markdown]
# The forest plot groups the associations by scale; the marks on the right
# show the hypothesised direction coloured by the verdict (green supported,
# red contradicted, amber inconclusive), the crosses the classical r.

# %%
fig = plot_associations(fit, assoc, verdicts)
plt.show()

# %% [markdown]
# From the command line the same analysis is
# `caltars-bayes fit ratings.csv --covariates covariates.csv
# --session-covariates session_covariates.csv --hypotheses
# models/caltars-1989-hypotheses.toml --out fit/`, then
# `caltars-bayes report fit/`.
