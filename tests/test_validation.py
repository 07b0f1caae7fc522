"""The vectorised pre-check and the Great Expectations suite are one suite: same verdicts, same reasons."""

from __future__ import annotations

from dataclasses import replace

import pytest
from corpus import bad_corpus, fleet_episode
from test_ingest import EXPECT, MAX_STEPS

from lwd_core.config import LWDConfig
from lwd_core.data import validation
from lwd_core.data.episode import Episode, EpisodeFormatError
from lwd_core.data.validation import (
    _suite_spec,
    check_frame,
    passes_precheck,
    validate_episodes,
)
from lwd_core.suite import TELEOP_POLICY_VERSION


def _parsed_bad_episodes() -> list[tuple[str, Episode]]:
    """Corpus cases that decode (the suite, not the parser, must catch them)."""
    parsed = []
    for case in bad_corpus(MAX_STEPS):
        try:
            parsed.append((case.name, Episode.from_parquet_bytes(case.data)))
        except EpisodeFormatError:
            continue
    return parsed


def test_precheck_has_a_vectorised_form_of_every_expectation():
    frame = check_frame([fleet_episode(seed=1)], EXPECT)
    for kind, column, kwargs, _ in _suite_spec(EXPECT):
        validation._holds(kind, column, kwargs)  # raises for a kind with no vectorised form
        assert column in frame.columns


def test_clean_batches_skip_gx(monkeypatch):
    def no_gx(_):
        raise AssertionError("GX ran on a clean batch")

    monkeypatch.setattr(validation, "_validator", no_gx)
    assert validate_episodes([fleet_episode(seed=i) for i in range(4)], EXPECT).failures == {}


@pytest.mark.parametrize("name, bad", _parsed_bad_episodes(), ids=lambda value: value if isinstance(value, str) else "")
def test_precheck_and_gx_agree_on_every_bad_case(name, bad):
    good = fleet_episode(seed=2)
    assert passes_precheck(check_frame([good], EXPECT), EXPECT)
    assert not passes_precheck(check_frame([good, bad], EXPECT), EXPECT), name
    report = validate_episodes([good, bad], EXPECT)
    assert report.reasons(bad.episode_id) and report.reasons(good.episode_id) == []
    assert report.failures == validate_episodes([good, bad], EXPECT, precheck=False).failures


def test_demonstrations_come_only_from_teleoperators():
    exp = replace(EXPECT, teleoperators=frozenset({"operator-1"}))
    demo = fleet_episode(seed=3, robot_id="operator-1", source="demo", policy_version=TELEOP_POLICY_VERSION)
    from_robot = fleet_episode(seed=3, source="demo", policy_version=TELEOP_POLICY_VERSION)
    rollout_from_operator = fleet_episode(seed=4, robot_id="operator-1")
    demo_naming_a_release = fleet_episode(seed=5, robot_id="operator-1", source="demo")
    rollout_passing_for_a_human = fleet_episode(seed=6, policy_version=TELEOP_POLICY_VERSION)
    episodes = [demo, from_robot, rollout_from_operator, demo_naming_a_release, rollout_passing_for_a_human]
    for precheck in (True, False):
        report = validate_episodes(episodes, exp, precheck=precheck)
        assert report.reasons(demo.episode_id) == []
        for refused in (from_robot, rollout_from_operator):
            assert any("source not allowed" in reason for reason in report.reasons(refused.episode_id))
        for refused in (demo_naming_a_release, rollout_passing_for_a_human):
            assert any("policy version and source disagree" in reason for reason in report.reasons(refused.episode_id))


def test_pipeline_expectations_name_the_configured_teleoperators(tmp_path):
    from tasks.pipeline import expectations

    config = LWDConfig(data_dir=tmp_path, fleet={"teleoperators": ["operator-1"]})
    assert expectations(config).teleoperators == {"operator-1"}
    assert expectations(LWDConfig(data_dir=tmp_path)).teleoperators == frozenset()
