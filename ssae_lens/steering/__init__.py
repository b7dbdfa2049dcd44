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
from ssae_lens.steering.comparison import (
    MethodComparison,
    MethodScore,
    PairedDifference,
    compare_evaluations,
)
from ssae_lens.steering.construct import caa_vector, mean_shift_vector, pca_vector
from ssae_lens.steering.diagnostics import (
    DecompositionReport,
    DecompositionWarning,
    DiagnosticThresholds,
    diagnose_decomposition,
)
from ssae_lens.steering.evaluation import evaluate_methods, evaluate_steering
from ssae_lens.steering.gguf import control_vector_layer, write_control_vector
from ssae_lens.steering.judge import LLMJudgeScorer
from ssae_lens.steering.query import QueryPrototypes, move_codes, steer_queries
from ssae_lens.steering.results import ScaleResult, SteeringEvaluation, SteeringSample
from ssae_lens.steering.scorers import (
    KeywordScorer,
    LikelihoodCoherenceScorer,
    ProbeScorer,
    Scorer,
)
from ssae_lens.steering.text_scorers import (
    LanguageScorer,
    ReadingEaseScorer,
    SameLanguageScorer,
    VaderSentimentScorer,
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
    "LanguageScorer",
    "LikelihoodCoherenceScorer",
    "MethodComparison",
    "MethodScore",
    "PairedDifference",
    "ProbeScorer",
    "QueryPrototypes",
    "ReadingEaseScorer",
    "SameLanguageScorer",
    "ScaleResult",
    "Scorer",
    "Steering",
    "SteeringCompatibilityWarning",
    "SteeringEvaluation",
    "SteeringHandle",
    "SteeringSample",
    "SteeringVector",
    "VaderSentimentScorer",
    "VectorFileError",
    "apply_steering",
    "caa_vector",
    "control_vector_layer",
    "compare_evaluations",
    "diagnose_decomposition",
    "evaluate_methods",
    "evaluate_steering",
    "mean_shift_vector",
    "move_codes",
    "pca_vector",
    "steer",
    "steer_queries",
    "steer_rows",
    "write_control_vector",
]
