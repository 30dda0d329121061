"""Routers, experts, sparse dispatch and Mixture-of-Experts layers."""

from sgmoe.layers import routers
from sgmoe.layers.feed_forward_experts import FeedForwardExperts
from sgmoe.layers.hierarchical_mixture_of_experts import (
    HierarchicalMixtureOfExperts)
from sgmoe.layers.mixture_of_experts import MixtureOfExperts
from sgmoe.layers.moe_layer import MoELayer
from sgmoe.layers.moe_layer import find_moe_layers
from sgmoe.layers.moe_layer import is_moe_layer
from sgmoe.layers.moe_layer import route_tokens
from sgmoe.layers.routers import ExpertChoiceRouter
from sgmoe.layers.routers import ExpertSlots
from sgmoe.layers.routers import GShardRouter
from sgmoe.layers.routers import NoisyTopKRouter
from sgmoe.layers.routers import Router
from sgmoe.layers.routers import RoutingResult
from sgmoe.layers.routers import StrictlyBalancedRouter
from sgmoe.layers.routers import SwitchRouter
from sgmoe.layers.token_routing import TokenRouting
# Registers the routers' former names, so older `.keras` files load.
from sgmoe.layers.routers import deprecated as _deprecated  # noqa: F401
