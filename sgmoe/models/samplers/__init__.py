"""Token samplers of `MoELanguageModel.generate`, with KerasHub's
semantics (`keras_hub.samplers`): greedy, top-k, top-p and plain
temperature sampling, each with a `temperature`."""

from sgmoe.models.samplers.greedy_sampler import GreedySampler
from sgmoe.models.samplers.random_sampler import RandomSampler
from sgmoe.models.samplers.registry import deserialize
from sgmoe.models.samplers.registry import get
from sgmoe.models.samplers.registry import serialize
from sgmoe.models.samplers.sampler import Sampler
from sgmoe.models.samplers.top_k_sampler import TopKSampler
from sgmoe.models.samplers.top_p_sampler import TopPSampler
