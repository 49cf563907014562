"""Tests for caltars_bayes.spec.instrument: loading, validation, structures, round trips."""

from __future__ import annotations

import shutil
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from caltars_bayes._core.errors import SpecError
from caltars_bayes.spec.instrument import (
    MAX_ITEMS,
    MAX_SCALES,
    Instrument,
    Prior,
    apply_model_spec,
    instrument_from_dict,
    load_instrument,
    models_dir,
    parse_instrument,
)

BASE = """
[instrument]
name = "T"
{instrument}

[response]
{response}

[[scale]]
code = "A"
items = ["A1", "A2", "A3"]
{scale_a}

[[scale]]
code = "B"
items = {items_b}

{tail}
"""


def spec(
    tmp_path: Path,
    *,
    instrument: str = "",
    response: str = "min = 1\nmax = 5",
    scale_a: str = "",
    items_b: str = '["B1", "B2"]',
    tail: str = "",
    name: str = "spec.toml",
) -> Path:
    p = tmp_path / name
    p.write_text(
        BASE.format(
            instrument=instrument, response=response, scale_a=scale_a, items_b=items_b, tail=tail
        )
    )
    return p


def test_shipped_caltars(caltars: Instrument) -> None:
    assert caltars.name == "CALTARS" and caltars.rater == "observer"
    assert caltars.scale_codes == ("PPC", "PNC", "TPC", "TNC", "PTA")
    assert len(caltars.items) == 30
    assert caltars.items[:6] == tuple(f"PPC{k}" for k in range(1, 7))
    assert caltars.item_scale["TNC3"] == "TNC"
    assert (caltars.response_min, caltars.response_max, caltars.n_categories) == (1, 5, 5)
    assert caltars.scale("PTA").provisional
    assert caltars.reverse_keyed == frozenset()
    assert set(caltars.structures) == {"general", "patient_therapist", "valence_role", "bifactor"}
    assert caltars.structures["bifactor"].bifactor
    assert caltars.source is not None and caltars.source.endswith("caltars.toml")


def test_shipped_calpas(calpas: Instrument) -> None:
    assert calpas.name == "CALPAS-O"
    assert calpas.scale_codes == ("PC", "PWC", "TUI", "WSC")
    assert len(calpas.items) == 24 and calpas.items[-1] == "CALPAS24"
    assert (calpas.response_min, calpas.response_max, calpas.n_categories) == (1, 7, 7)


def test_minimal_spec(tmp_path: Path) -> None:
    inst = load_instrument(spec(tmp_path))
    assert inst.items == ("A1", "A2", "A3", "B1", "B2")
    assert inst.scale("B").name == "B"
    with pytest.raises(KeyError):
        inst.scale("Z")


@pytest.mark.parametrize(
    ("kw", "where"),
    [
        ({"instrument": "colour = 'red'"}, r"\[instrument\]: unknown key\(s\) 'colour'"),
        ({"scale_a": "weight = 2"}, r"\[\[scale\]\] #1: unknown key\(s\) 'weight'"),
        ({"tail": "[model]\nsession_levl = true"}, r"\[model\]: unknown key\(s\) 'session_levl'"),
        ({"tail": "[priors]\nloadings = 1"}, r"\[priors\]: unknown key\(s\) 'loadings'"),
        ({"tail": "[extra]\na = 1"}, r"spec\.toml: unknown key\(s\) 'extra'"),
        ({"response": "min = 1\nmax = 5\nmid = 3"}, r"\[response\]: unknown key\(s\) 'mid'"),
    ],
)
def test_unknown_keys(tmp_path: Path, kw: dict[str, str], where: str) -> None:
    with pytest.raises(SpecError, match=where):
        load_instrument(spec(tmp_path, **kw))


def test_unknown_prior_parameter(tmp_path: Path) -> None:
    tail = "[priors]\nlog_loading = { dist = 'Normal', mu = 0, sigma = 1, nu = 3 }"
    with pytest.raises(SpecError, match=r"\[priors\]\.log_loading: unknown key\(s\) 'nu'"):
        load_instrument(spec(tmp_path, tail=tail))


@pytest.mark.parametrize(
    ("response", "msg"),
    [
        ("min = 5\nmax = 1", "gives -3 categories"),
        ("min = 3\nmax = 3", "3..3 gives 1 categories"),
        ("min = 1\nmax = 12", "1..12 gives 12 categories; allowed 2..11"),
        ("min = 1.0\nmax = 5", r"\[response\]\.min: must be a whole number"),
        ("min = 1\nmax = '5'", r"\[response\]\.max: must be a whole number"),
        ("min = 1\nmax = 3\nlabels = ['a', 'b']", "2 labels for 3 categories"),
    ],
)
def test_bad_response(tmp_path: Path, response: str, msg: str) -> None:
    with pytest.raises(SpecError, match=msg):
        load_instrument(spec(tmp_path, response=response))


def test_eleven_and_two_categories_accepted(tmp_path: Path) -> None:
    assert load_instrument(spec(tmp_path, response="min = 0\nmax = 10")).n_categories == 11
    assert load_instrument(spec(tmp_path, response="min = 0\nmax = 1")).n_categories == 2


def test_item_in_two_scales(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"\(B\): item 'A2' already belongs to scale 'A'"):
        load_instrument(spec(tmp_path, items_b='["B1", "A2"]'))


def test_duplicate_scale_and_empty_items(tmp_path: Path) -> None:
    p = tmp_path / "dup.toml"
    p.write_text(
        '[instrument]\nname = "T"\n[[scale]]\ncode = "A"\nitems = ["x"]\n'
        '[[scale]]\ncode = "A"\nitems = ["y"]\n'
    )
    with pytest.raises(SpecError, match="duplicate scale code 'A'"):
        load_instrument(p)
    with pytest.raises(SpecError, match="must be a list of non-empty strings"):
        load_instrument(spec(tmp_path, items_b='["B1", ""]'))
    with pytest.raises(SpecError, match="needs at least one item"):
        load_instrument(spec(tmp_path, items_b="[]"))


def test_reverse_keys(tmp_path: Path) -> None:
    inst = load_instrument(spec(tmp_path, instrument='reverse_keyed = ["A2", "B1"]'))
    assert inst.reverse_keyed == frozenset({"A2", "B1"})
    with pytest.raises(SpecError, match=r"reverse_keyed: 'C9' is not an item of any scale"):
        load_instrument(spec(tmp_path, instrument='reverse_keyed = ["C9"]'))


def test_rater(tmp_path: Path) -> None:
    assert load_instrument(spec(tmp_path, instrument='rater = "self-report"')).rater == (
        "self-report"
    )
    with pytest.raises(SpecError, match=r"rater: must be"):
        load_instrument(spec(tmp_path, instrument='rater = "peer"'))


@pytest.mark.parametrize(
    ("prior", "msg"),
    [
        ("{ dist = 'Cauchy', sigma = 1 }", "unknown prior family 'Cauchy'"),
        ("{ dist = 'HalfNormal', sigma = -1 }", "'sigma' must be > 0, got -1"),
        ("{ dist = 'HalfNormal', sigma = 0 }", "'sigma' must be > 0"),
        ("{ dist = 'HalfNormal' }", "HalfNormal prior needs 'sigma'"),
        ("{ sigma = 1 }", "prior needs 'dist'"),
        ("{ dist = 'HalfNormal', sigma = 'big' }", "must be a number"),
        ("1.0", "a prior is a table"),
    ],
)
def test_bad_priors(tmp_path: Path, prior: str, msg: str) -> None:
    with pytest.raises(SpecError, match=msg):
        load_instrument(spec(tmp_path, tail=f"[priors]\nsd_session = {prior}"))


def test_priors_and_model_parsed(tmp_path: Path) -> None:
    tail = (
        "[model]\nsession_level = false\ncutpoints = 'scale'\n"
        "[priors]\nsd_session = { dist = 'HalfStudentT', nu = 3, sigma = 0.5 }\nlkj_eta = 4"
    )
    inst = load_instrument(spec(tmp_path, tail=tail))
    assert inst.model.session_level is False and inst.model.cutpoints == "scale"
    assert inst.priors.sd_session == Prior("HalfStudentT", {"nu": 3.0, "sigma": 0.5})
    assert str(inst.priors.sd_session) == "HalfStudentT(nu=3, sigma=0.5)"
    assert inst.priors.lkj_eta == 4.0
    assert inst.priors.log_loading.dist == "Normal"  # untouched default


@pytest.mark.parametrize(
    "model",
    [
        "session_level = 'yes'",
        "session_trend = 'auto'",
        "cutpoints = 'judge'",
        "parameterisation = 'wild'",
        "target_accept = 1.0",
        "target_accept = 0.2",
    ],
)
def test_bad_model_options(tmp_path: Path, model: str) -> None:
    with pytest.raises(SpecError, match=r"\[model\]\."):
        load_instrument(spec(tmp_path, tail=f"[model]\n{model}"))


def test_structures(caltars: Instrument) -> None:
    general = caltars.with_structure("general")
    assert general.scale_codes == ("ALLIANCE",)
    assert general.items == caltars.items
    assert general.structures == {}
    pt = caltars.with_structure("patient_therapist")
    assert pt.scale_codes == ("PATIENT", "THERAPIST")
    assert (
        pt.scale("PATIENT").items
        == caltars.scale("PPC").items + caltars.scale("PNC").items + caltars.scale("PTA").items
    )
    assert len(pt.scale("THERAPIST").items) == 12
    assert caltars.with_structure("default") is caltars
    with pytest.raises(SpecError, match="no structure 'nope'; known: default, general"):
        caltars.with_structure("nope")


def test_structure_items_and_errors(tmp_path: Path) -> None:
    ok = "[structures.mixed]\nfactors = { F1 = ['A', 'B1'], F2 = ['B2'] }"
    inst = load_instrument(spec(tmp_path, tail=ok))
    mixed = inst.with_structure("mixed")
    assert mixed.scale("F1").items == ("A1", "A2", "A3", "B1")
    assert mixed.scale("F2").items == ("B2",)
    bad = {
        "[structures.s]\nfactors = { F1 = ['A', 'Z'] }": "'Z' is neither a scale nor an item",
        "[structures.s]\nfactors = { F1 = ['A', 'B'], F2 = ['A1'] }": "assigned twice",
        "[structures.s]\nfactors = { F1 = ['A'] }": "items not assigned to any factor",
        "[structures.s]\ndescription = 'x'": "'factors' must map",
    }
    for tail, msg in bad.items():
        with pytest.raises(SpecError, match=msg):
            load_instrument(spec(tmp_path, tail=tail))


def test_apply_model_spec(tmp_path: Path, caltars: Instrument) -> None:
    doc = {
        "model": {"session_level": False, "judge_subject_interaction": True},
        "priors": {"trend": {"dist": "Normal", "mu": 0, "sigma": 0.1}},
    }
    inst = apply_model_spec(caltars, doc)
    assert inst.model.session_level is False and inst.model.judge_subject_interaction
    assert inst.model.cutpoints == caltars.model.cutpoints
    assert inst.priors.trend.params == {"mu": 0.0, "sigma": 0.1}
    assert inst.items == caltars.items
    assert inst.hash() != caltars.hash()
    model = tmp_path / "model.toml"
    model.write_text("[model]\ntarget_accept = 0.95\n")
    loaded = load_instrument(models_dir() / "caltars.toml", model=model)
    assert loaded.model.target_accept == 0.95
    with pytest.raises(SpecError, match=r"<model>: unknown key\(s\) 'scale'"):
        apply_model_spec(caltars, {"scale": []})
    model.write_text("[model]\nsession_levle = 1\n")
    with pytest.raises(SpecError, match=r"model\.toml \[model\]: unknown key"):
        load_instrument(models_dir() / "caltars.toml", model=model)


@pytest.mark.parametrize("name", ["caltars.toml", "calpas.toml"])
def test_spec_dict_round_trip(name: str, tmp_path: Path) -> None:
    inst = load_instrument(models_dir() / name)
    back = instrument_from_dict(inst.spec_dict())
    assert back.spec_dict() == inst.spec_dict()
    assert replace(back, source=inst.source) == inst
    assert back.hash() == inst.hash()
    assert len(inst.hash()) == 16 and inst.hash() == inst.hash()
    copy = tmp_path / "elsewhere.toml"
    shutil.copy(models_dir() / name, copy)
    assert load_instrument(copy).hash() == inst.hash()  # content, not path


def test_round_trip_with_everything(tmp_path: Path) -> None:
    tail = (
        "[structures.one]\ndescription = 'all'\nfactors = { G = ['A', 'B'] }\n"
        "[model]\nsession_trend = true\n"
        "[priors]\ncutpoint = { dist = 'StudentT', nu = 4, mu = 0, sigma = 2 }\n"
    )
    p = spec(
        tmp_path,
        instrument='reverse_keyed = ["B2"]\ntitle = "Test"',
        response="min = 0\nmax = 2\nlabels = ['no', 'some', 'yes']",
        scale_a='provisional = true\nnote = "tentative"',
        tail=tail,
    )
    inst = load_instrument(p)
    back = instrument_from_dict(inst.spec_dict())
    assert replace(back, source=inst.source) == inst
    assert back.hash() == inst.hash()


def _big_spec(n_items: int, n_scales: int) -> dict[str, object]:
    per = [n_items // n_scales + (k < n_items % n_scales) for k in range(n_scales)]
    scales, start = [], 0
    for k, m in enumerate(per):
        scales.append({"code": f"S{k}", "items": [f"I{i}" for i in range(start, start + m)]})
        start += m
    return {"instrument": {"name": "BIG"}, "scale": scales}


def test_size_limits() -> None:
    inst = parse_instrument(_big_spec(MAX_ITEMS, MAX_SCALES))
    assert len(inst.items) == 200 and len(inst.scales) == 12
    with pytest.raises(SpecError, match="201 items; at most 200"):
        parse_instrument(_big_spec(MAX_ITEMS + 1, MAX_SCALES))
    with pytest.raises(SpecError, match="13 scales; at most 12"):
        parse_instrument(_big_spec(26, MAX_SCALES + 1))


def test_toml_errors(tmp_path: Path) -> None:
    p = tmp_path / "broken.toml"
    p.write_text('[instrument\nname = "x"\n')
    with pytest.raises(SpecError, match=r"broken\.toml: not valid TOML") as ei:
        load_instrument(p)
    assert isinstance(ei.value.__context__, tomllib.TOMLDecodeError)
    with pytest.raises(SpecError, match=r"absent\.toml: spec file not found"):
        load_instrument(tmp_path / "absent.toml")
    p.write_text("[response]\nmin = 1\n")
    with pytest.raises(SpecError, match=r"missing \[instrument\] table"):
        load_instrument(p)
    p.write_text('[instrument]\nname = "x"\n')
    with pytest.raises(SpecError, match=r"at least one \[\[scale\]\] table is required"):
        load_instrument(p)
