"""The world: KL-regularized preference bandit instances, oracles, exact evaluation and data.

Knows nothing about learning (docs/design.md §1). See docs/theory.md §1, §3.1, §8.1 for the mathematics.
"""
from bandits import _xla_workarounds  # noqa: F401  (before JAX's CPU backend starts)
from bandits.data import (COMPARE_ALL_MAX, PreferenceData, comparison_uniforms, concatenate, feature_differences,
                          inverse_cdf, preference_probability, sample_joint_preference_data, sample_labels,
                          sample_preference_data, search_rows, with_size)
from bandits.evaluation import (context_mean, expected_kl, expected_reward, kl_to_reference,
                                optimal_policy, optimal_value, preference_matrices, suboptimality,
                                suboptimality_kl, value, win_rate)
from bandits.instance import (REWARD_KINDS, Instance, InstanceConfig, instance_from_arrays,
                              make_instance, public_view, random_features)
from bandits.nash import (PAYOFFS, NashSolution, best_response, duality_gap, game_value,
                          max_min_value, nash_equilibrium, nash_value, payoff_matrices)
from bandits.policy import (gibbs_policy, kl_divergence, log_partition, normalize_logits,
                            uniform_policy)
from bandits.preferences import (labels_from_probability, margin_matrix, preference_margin,
                                 preference_matrix, random_skew_matrix)
from bandits.rewards import LinearReward, MLPReward, reward_table

__all__ = [name for name in dir() if not name.startswith("_")]
