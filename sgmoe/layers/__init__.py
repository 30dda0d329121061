"""Gating networks, experts, sparse dispatch and Mixture-of-Experts layers."""

from sgmoe.layers.expert_choice_router import ExpertChoiceRouter
from sgmoe.layers.feed_forward_experts import FeedForwardExperts
from sgmoe.layers.gshard_router import GShardRouter
from sgmoe.layers.hierarchical_mixture_of_experts import (
    HierarchicalMixtureOfExperts)
from sgmoe.layers.mixture_of_experts import MixtureOfExperts
from sgmoe.layers.noisy_top_k_gating import NoisyTopKGating
from sgmoe.layers.routing_result import ExpertSlots
from sgmoe.layers.routing_result import RoutingResult
from sgmoe.layers.strictly_balanced_gating import StrictlyBalancedGating
from sgmoe.layers.switch_router import SwitchRouter
