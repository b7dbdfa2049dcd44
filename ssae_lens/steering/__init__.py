"""Steering at TransformerLens hook points: vectors, applying them, and building them."""

from ssae_lens.steering.apply import (
    OPERATORS,
    POSITION_NAMES,
    Steering,
    SteeringHandle,
    apply_steering,
    steer,
    steer_rows,
)
from ssae_lens.steering.construct import caa_vector, mean_shift_vector, pca_vector
from ssae_lens.steering.vector import SteeringCompatibilityWarning, SteeringVector

__all__ = [
    "OPERATORS",
    "POSITION_NAMES",
    "Steering",
    "SteeringCompatibilityWarning",
    "SteeringHandle",
    "SteeringVector",
    "apply_steering",
    "caa_vector",
    "mean_shift_vector",
    "pca_vector",
    "steer",
    "steer_rows",
]

from ssae_lens.steering.diagnostics import (
    DecompositionReport,
    DecompositionWarning,
    DiagnosticThresholds,
    diagnose_decomposition,
)
from ssae_lens.steering.evaluation import SteeringEvaluation, evaluate_steering
from ssae_lens.steering.scorers import (
    KeywordScorer,
    LikelihoodCoherenceScorer,
    LLMJudgeScorer,
    ProbeScorer,
    Scorer,
)

__all__ += [
    "DecompositionReport",
    "DecompositionWarning",
    "DiagnosticThresholds",
    "KeywordScorer",
    "LLMJudgeScorer",
    "LikelihoodCoherenceScorer",
    "ProbeScorer",
    "Scorer",
    "SteeringEvaluation",
    "diagnose_decomposition",
    "evaluate_steering",
]
