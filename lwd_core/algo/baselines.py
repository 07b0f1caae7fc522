"""Data-side logic of the baselines; their updates live in the learner.

- BC: flow matching on every transition (``method="bc"``).
- HG-DAgger (Kelly et al., arXiv 1810.02890): the teleoperator takes over in risky states and only the
  takeover segments (plus the initial demonstrations) are aggregated for BC: :func:`hgdagger_subset`.
- RECAP-style (pi*0.6, arXiv 2511.14759): a distributional value over Monte-Carlo returns; the n-step
  advantage A = R + gamma^k V(s') - V(s) is binarised per task at a percentile so the top
  ``positive_fraction`` is "positive"; interventions are forced positive; the policy is trained on all
  data conditioned on that token and acts with "positive": :func:`recap_conditions`.
"""

from __future__ import annotations

import numpy as np

from lwd_core.algo.learner import CONDITION_NEGATIVE, CONDITION_POSITIVE


def subset(transitions: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {key: value[mask] for key, value in transitions.items()}


def hgdagger_subset(transitions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    mask = transitions["intervention"] | transitions["demo"]
    if not mask.any():
        raise ValueError("HG-DAgger needs intervention or demonstration data; none in these transitions")
    return subset(transitions, mask)


def recap_conditions(
    transitions: dict[str, np.ndarray],
    value: np.ndarray,
    next_value: np.ndarray,
    positive_fraction: float,
) -> np.ndarray:
    """Advantage tokens per transition from value estimates at s and s' (means of V)."""
    advantage = transitions["reward"] + transitions["discount"] * next_value - value
    conditions = np.full(len(advantage), CONDITION_NEGATIVE, dtype=np.int32)
    for task in np.unique(transitions["task"]):
        rows = transitions["task"] == task
        threshold = np.quantile(advantage[rows], 1.0 - positive_fraction)
        conditions[rows & (advantage >= threshold)] = CONDITION_POSITIVE
    conditions[transitions["intervention"]] = CONDITION_POSITIVE
    return conditions
