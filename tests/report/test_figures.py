"""The report's figures draw the tables they sit beside: reliability, loadings, design map,
alliance over sessions, the category rootogram; the HTML embeds them as inline SVG."""

from __future__ import annotations

import re

import matplotlib
import numpy as np
import pandas as pd
import pytest
import xarray as xr

matplotlib.use("Agg")

from caltars_bayes._core.errors import CaltarsError
from caltars_bayes.analysis.reliability import reliability
from caltars_bayes.analysis.structure import standardised_loadings
from caltars_bayes.data.ratings import RatingData
from caltars_bayes.model.simulate import simulate_trial
from caltars_bayes.report.plots_data import (
    category_tree,
    design_counts,
    plot_category_ppc,
    plot_design,
)
from caltars_bayes.report.plots_results import (
    alliance_rows,
    default_subjects,
    plot_alliance_sessions,
    plot_loadings,
    plot_reliability,
)
from caltars_bayes.report.render_html import inline_svg
from caltars_bayes.report.sections_results import validity_section
from caltars_bayes.spec.hypotheses import Hypotheses, Hypothesis

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


@pytest.fixture
def close():
    import matplotlib.pyplot as plt

    figs = []
    yield figs.append
    for f in figs:
        plt.close(f)


def _by_gid(fig) -> dict[str, object]:
    return {ln.get_gid(): ln for ax in fig.axes for ln in ax.lines if ln.get_gid()}


@pytest.fixture(scope="module")
def rel_table(tiny_fit) -> pd.DataFrame:
    """A cheap reliability table of the tiny fit (few observed-route draws, short bootstrap)."""
    return reliability(tiny_fit, max_observed_draws=10, n_boot=20)


def test_plot_reliability_draws_the_table(tiny_fit, rel_table, close):
    fig = plot_reliability(tiny_fit, rel_table)
    close(fig)
    marks = _by_gid(fig)
    post = rel_table[
        (rel_table["coefficient"] == "agreement")
        & (rel_table["generalizes_over"] == "judges")
        & (rel_table["route"] == "observed")
    ]
    assert len(post) == 4 * tiny_fit.data.n_scales  # 2 levels x (1 judge, mean of 3)
    for r in post.itertuples():
        who = "1 judge" if r.judges == 1 else f"mean of {r.judges} judges"
        gid = f"{r.scale}|{r.level}, {who}|observed"
        assert marks[gid].get_xdata()[0] == pytest.approx(r.median)
        np.testing.assert_allclose(marks[f"{gid}|interval"].get_xdata(), [r.hdi_low, r.hdi_high])
        assert marks[f"{r.scale}|{r.level}, {who}|icc"].get_xdata()[0] == pytest.approx(r.classical)
    ic = rel_table[rel_table["route"] == "classical"]
    assert set(ic["coefficient"]) == {"alpha", "omega"}
    for r in ic.itertuples():
        gid = f"{r.scale}|{r.coefficient} (items)|classical"
        assert marks[gid].get_xdata()[0] == pytest.approx(r.median)
        np.testing.assert_allclose(marks[f"{gid}|interval"].get_xdata(), [r.hdi_low, r.hdi_high])
    # nothing else is drawn: latent rows and consistency coefficients are left out
    points = [g for g in marks if not g.endswith(("|interval", "|icc"))]
    assert len(points) == len(post) + len(ic)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == list(tiny_fit.data.scales)


def test_plot_loadings_draws_the_loadings_table(tiny_fit, close):
    table = standardised_loadings(tiny_fit)
    fig = plot_loadings(tiny_fit, table)
    close(fig)
    marks = _by_gid(fig)
    assert len([g for g in marks if g.endswith("|specific")]) == len(table) == 24
    for r in table.itertuples():
        gid = f"{r.scale}|{r.item}|specific"
        assert marks[gid].get_xdata()[0] == pytest.approx(r.median)
        np.testing.assert_allclose(marks[f"{gid}|interval"].get_xdata(), [r.hdi_low, r.hdi_high])
        assert marks[f"{r.scale}|{r.item}|classical"].get_xdata()[0] == pytest.approx(
            r.classical_loading
        )
    # each panel holds its scale's items, in instrument order
    for ax in fig.axes:
        if ax.get_visible():
            labels = [t.get_text() for t in ax.get_yticklabels()]
            assert labels == list(table.loc[table["scale"] == ax.get_title(), "item"])


def _with_gaps(data: RatingData) -> RatingData:
    """The tiny trial's ratings with J2 missing P01's first session and J1 rating 10 of
    P02's second session's items."""
    long = data.to_long()
    s = long["session"].astype(str)
    drop = ((long["subject"] == "P01") & (s == "1") & (long["judge"] == "J2")) | (
        (long["subject"] == "P02") & (s == "2") & (long["judge"] == "J1")
        & ~long["item"].isin(list(data.items[:10]))
    )  # fmt: skip
    return RatingData.from_frame(long[~drop], data.instrument)


def test_design_map_counts_the_items_each_judge_rated(tiny_fit, close):
    data = _with_gaps(tiny_fit.data)
    counts = design_counts(data)
    label = data.ratings["subject"].astype(str) + "|" + data.ratings["session"].astype(str)
    direct = data.ratings.assign(label=label).groupby(["judge", "label"]).size().unstack()
    direct = direct.reindex(index=list(data.judges), columns=list(data.session_labels))
    np.testing.assert_array_equal(counts.to_numpy(), direct.fillna(0).to_numpy())
    assert counts.loc["J2", "P01|1"] == 0 and counts.loc["J1", "P02|2"] == 10
    assert counts.to_numpy().sum() == data.n_ratings
    fig = plot_design(data)
    close(fig)
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_array_equal(np.ma.filled(shown, 0), counts.to_numpy())
    assert np.ma.getmaskarray(shown).sum() == 1  # the one session J2 did not rate: grey
    n_cells = data.n_judges * data.n_sessions
    assert f"{n_cells - 1} of {n_cells} judge x session cells rated (1 incomplete)" in (
        fig._suptitle.get_text()
    )
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(data.judges)


def test_alliance_over_sessions_draws_the_session_scores(tiny_fit, close):
    scores = tiny_fit.scores()
    chosen = default_subjects(scores, 3)
    means = scores[scores["level"] == "subject"].groupby("subject")["mean"].mean()
    # deterministic and spread: the lowest, the middle (rank 6 of 0-11) and the highest subject
    ordered = list(means.sort_values(kind="stable").index)
    assert chosen == [ordered[0], ordered[6], ordered[11]]
    assert chosen[0] == means.idxmin() and chosen[-1] == means.idxmax()
    assert default_subjects(scores, 3) == chosen
    fig = plot_alliance_sessions(tiny_fit, chosen, scores=scores)
    close(fig)
    marks = _by_gid(fig)
    rows = alliance_rows(tiny_fit, chosen, scores)
    for (subj, scale), r in rows.groupby(["subject", "scale"], sort=False):
        line = marks[f"{scale}|{subj}|session"]
        np.testing.assert_allclose(line.get_ydata(), r["mean"])
        np.testing.assert_allclose(np.round(line.get_xdata()), r["session_number"])
    assert len(marks) == 3 * tiny_fit.data.n_scales
    picked = plot_alliance_sessions(tiny_fit, ["P05"], scores=scores)
    close(picked)
    assert {g.split("|")[1] for g in _by_gid(picked)} == {"P05"}
    with pytest.raises(CaltarsError, match="subjects not in the fit: P99"):
        plot_alliance_sessions(tiny_fit, ["P05", "P99"], scores=scores)


def test_category_rootogram_counts_each_scales_ratings(tiny_fit, close):
    data = tiny_fit.data
    tree = category_tree(tiny_fit, draws=5)
    obs = tree["observed_data"]
    assert list(obs.data_vars) == list(data.scales)
    scores = data.y + data.instrument.response_min
    total = 0
    for k, scale in enumerate(data.scales):
        mine = scores[np.asarray(data.scale_idx) == k]
        np.testing.assert_array_equal(np.sort(obs[scale].values), np.sort(mine))
        total += obs[scale].size
        assert tree["posterior_predictive"][scale].sizes == {
            "chain": 2, "draw": 5, f"obs_{scale}": len(mine)
        }  # fmt: skip
    assert total == data.n_ratings
    fig = plot_category_ppc(tiny_fit, tree=tree)
    close(fig)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(panels) == set(data.scales)
    for k, scale in enumerate(data.scales):
        cats, counts = np.unique(scores[np.asarray(data.scale_idx) == k], return_counts=True)
        want = np.column_stack([cats, counts]).astype(float)
        offsets = [np.asarray(c.get_offsets(), dtype=float) for c in panels[scale].collections]
        assert any(o.shape == want.shape and np.allclose(o, want) for o in offsets), scale
    pooled = category_tree(tiny_fit, draws=5, by=None)
    assert list(pooled["observed_data"].data_vars) == ["rating"]


def test_inline_svg_ids_are_unique_per_figure(tiny_fit, close):
    import matplotlib.pyplot as plt

    figs = []
    for _ in range(2):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        ax.set_title("a <b> & c")
        figs.append(fig)
        close(fig)
    a, b = inline_svg(figs[0], "one", "caption 'x'"), inline_svg(figs[1], "two")
    assert a.startswith("<svg role='img' aria-label='caption &#x27;x&#x27;'")
    assert "<?xml" not in a and "<!DOCTYPE" not in a and a.rstrip().endswith("</svg>")
    ids_a = set(re.findall(r'\bid="([^"]+)"', a))
    ids_b = set(re.findall(r'\bid="([^"]+)"', b))
    assert ids_a and all(i.startswith("one-") for i in ids_a)
    assert not ids_a & ids_b
    for svg, ids in ((a, ids_a), (b, ids_b)):
        refs = set(re.findall(r'(?:url\(#|href="#)([^")]+)', svg))
        assert refs and refs <= ids  # every reference points into the same figure


def test_hypotheses_file_is_named_not_located(tiny_fit, tmp_path, close):
    hyps = Hypotheses(
        [Hypothesis("PC", "x", "positive")], source=str(tmp_path / "deep" / "my-hyps.toml")
    )
    section, _ = validity_section(tiny_fit, hyps)
    for f in section.figures:
        close(f.figure)
    text = " ".join(section.text)
    assert "Hypotheses (my-hyps.toml)" in text
    assert str(tmp_path) not in text


def test_design_map_of_many_judges_keeps_every_cell_and_labels_a_few(calpas, close, monkeypatch):
    from caltars_bayes.report import plots_data

    data = simulate_trial(calpas, n_subjects=3, n_sessions=1, n_judges=50, seed=1).to_rating_data()
    monkeypatch.setattr(plots_data, "MAX_SUBJECT_LINES", 2)
    fig = plot_design(data)
    close(fig)
    ax = fig.axes[0]
    np.testing.assert_array_equal(
        np.ma.filled(ax.images[0].get_array(), 0), design_counts(data).to_numpy()
    )
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == list(data.judges)[:: int(np.ceil(50 / plots_data.MAX_JUDGE_TICKS))]
    assert fig.get_size_inches()[1] <= 0.32 * plots_data.MAX_JUDGE_TICKS + 1.9 + 1e-9
    assert not ax.lines  # 3 subjects > MAX_SUBJECT_LINES: no separating lines


def test_judges_figure_of_many_judges_shows_those_farthest_from_average():
    from caltars_bayes.report.plots import shown_judges

    rng = np.random.default_rng(0)
    n = 45
    sev = rng.normal(0, 0.1, (2, 20, 2, n))
    sev[..., 1, 7] += 3.0  # far on one scale only
    logd = rng.normal(0, 0.1, (2, 20, n))
    logd[..., 30] -= 2.0
    judges = [f"J{i:02d}" for i in range(n)]
    draws = xr.Dataset(
        {"severity": (("chain", "draw", "scale", "judge"), sev),
         "log discrimination": (("chain", "draw", "judge"), logd)},
        coords={"judge": judges, "scale": ["A", "B"]},
    )  # fmt: skip
    assert shown_judges(draws, max_judges=n) is None
    picked = shown_judges(draws, max_judges=5)
    assert picked is not None and len(picked) == 5
    assert {"J07", "J30"} <= set(picked) and picked == sorted(picked)
    far = np.maximum(np.abs(np.median(sev, (0, 1))).max(0), np.abs(np.median(logd, (0, 1))))
    assert set(picked) == {judges[i] for i in np.argsort(-far)[:5]}
