"""What each expert serves: routing a text, and the per-expert profile."""

import numpy as np
import pytest
from keras import ops

from sgmoe.evaluation import LayerRouting
from sgmoe.evaluation import RoutedText
from sgmoe.evaluation import context_of
from sgmoe.evaluation import expert_profiles
from sgmoe.evaluation import route_sentences
from sgmoe.layers import route_tokens
from sgmoe.models import MoELanguageModel


def routed_text():
    """Two sentences, tokens 0..5: ids [1 7 8 7 | 1 8]; 3 experts.

    Expert 0 takes token 1 (w .9), token 3 (.7) and token 2 (.2);
    expert 1 takes token 2 (.8), token 5 (.6) and token 0 (1.0);
    expert 2 takes token 4 (1.0), token 1 (.1) and token 3 (.3).
    """
    sentences = [np.array([1, 7, 8, 7]), np.array([1, 8])]
    token = np.array([1, 3, 2, 2, 5, 0, 4, 1, 3])
    expert = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    weight = np.array([.9, .7, .2, .8, .6, 1.0, 1.0, .1, .3])
    return RoutedText(
        token_ids=np.concatenate(sentences),
        sentence=np.array([0, 0, 0, 0, 1, 1]),
        position=np.array([0, 1, 2, 3, 0, 1]), sentences=sentences,
        layers={"moe": LayerRouting(3, token, expert, weight)})


def test_profiles_rank_words_by_mean_gate_over_all_occurrences():
    profiles = expert_profiles(routed_text(), "moe", min_count=2,
                               num_words=2, num_contexts=2)
    assert [p.expert for p in profiles] == [0, 1, 2]  # 3 each: by index
    first = profiles[0]
    assert first.assignments == 3 and first.share == pytest.approx(1 / 3)
    assert first.mean_weight == pytest.approx(0.6)
    # Word 7 occurs twice, both with expert 0 (.9, .7): .8. Word 8 occurs
    # twice, once here (.2): .1. Word 1 (twice) never: not listed.
    assert first.words == [(7, pytest.approx(0.8), 2),
                           (8, pytest.approx(0.1), 2)]
    assert first.contexts == [(1, pytest.approx(0.9)),
                              (3, pytest.approx(0.7))]
    second = profiles[1]
    # Word 8: (.8 + .6) / 2; word 1: 1.0 / 2.
    assert second.words == [(8, pytest.approx(0.7), 2),
                            (1, pytest.approx(0.5), 2)]
    assert second.contexts == [(0, pytest.approx(1.0)),
                               (2, pytest.approx(0.8))]
    # min_count 3: no word occurs three times.
    assert all(not p.words for p in expert_profiles(routed_text(), "moe",
                                                    min_count=3))
    with pytest.raises(ValueError, match="layer_name"):
        expert_profiles(routed_text(), "other")


def test_context_is_the_token_and_the_words_before_it_in_its_sentence():
    text = routed_text()
    np.testing.assert_array_equal(context_of(text, 3, left=2), [7, 8, 7])
    np.testing.assert_array_equal(context_of(text, 5, left=4), [1, 8])


def test_route_sentences_keeps_every_real_token_and_no_padding():
    model = MoELanguageModel.from_preset("tiny_moe", vocabulary_size=30,
                                         seed=1)
    model.build((None, None))
    for layer in model.moe_layers():
        for variable in layer.trainable_weights:
            if "experts" not in variable.path:
                variable.assign(np.random.RandomState(0).randn(
                    *variable.shape).astype("float32"))
    rng = np.random.RandomState(1)
    sentences = [[1] + list(rng.randint(4, 30, n)) for n in (6, 2, 9, 4, 3)]

    text = route_sentences(model, sentences, batch_size=2)

    np.testing.assert_array_equal(text.token_ids, np.concatenate(sentences))
    [(name, routing)] = text.layers.items()
    k = model.moe_layers()[0].k
    assert len(routing.expert) == len(text.token_ids) * k
    # The third batch holds sentence 4 alone; its routing is the layer's.
    direct = route_tokens(model, np.array([sentences[4]], "int32"))[name]
    mine = np.isin(routing.token, np.arange(len(text.token_ids))[
        text.sentence == 4])
    order = np.lexsort((-routing.weight[mine], routing.token[mine]))
    np.testing.assert_array_equal(
        routing.expert[mine][order],
        ops.convert_to_numpy(direct.expert_indices)[0].reshape(-1))
    np.testing.assert_allclose(
        routing.weight[mine][order],
        ops.convert_to_numpy(direct.expert_weights)[0].reshape(-1),
        rtol=1e-6)
    with pytest.raises(ValueError, match="no tokens"):
        route_sentences(model, [])
