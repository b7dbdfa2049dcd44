"""Steering at TransformerLens hook points: vectors, applying them, building them,
reading them through an SAE, and evaluating them."""

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
from ssae_lens.steering.diagnostics import (
    DecompositionReport,
    DecompositionWarning,
    DiagnosticThresholds,
    diagnose_decomposition,
)
from ssae_lens.steering.evaluation import SteeringEvaluation, evaluate_steering
from ssae_lens.steering.gguf import control_vector_layer, write_control_vector
from ssae_lens.steering.query import QueryPrototypes, move_codes, steer_queries
from ssae_lens.steering.scorers import (
    KeywordScorer,
    LikelihoodCoherenceScorer,
    LLMJudgeScorer,
    ProbeScorer,
    Scorer,
)
from ssae_lens.steering.vector import (
    SteeringCompatibilityWarning,
    SteeringVector,
    VectorFileError,
)

__all__ = [
    "OPERATORS",
    "POSITION_NAMES",
    "DecompositionReport",
    "DecompositionWarning",
    "DiagnosticThresholds",
    "KeywordScorer",
    "LLMJudgeScorer",
    "LikelihoodCoherenceScorer",
    "ProbeScorer",
    "QueryPrototypes",
    "Scorer",
    "Steering",
    "SteeringCompatibilityWarning",
    "SteeringEvaluation",
    "SteeringHandle",
    "SteeringVector",
    "VectorFileError",
    "apply_steering",
    "caa_vector",
    "control_vector_layer",
    "diagnose_decomposition",
    "evaluate_steering",
    "mean_shift_vector",
    "move_codes",
    "pca_vector",
    "steer",
    "steer_queries",
    "steer_rows",
    "write_control_vector",
]
