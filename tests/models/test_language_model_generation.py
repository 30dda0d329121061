"""MoELanguageModel.generate against the model's teacher-forced pass."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.data import WordVocabulary
from sgmoe.models import MoELanguageModel
from sgmoe.models import samplers
from sgmoe.models.buckets import batch_bucket
from sgmoe.models.buckets import length_bucket
from sgmoe.models.stateless_function import stateless_function

PAD = 0
# Three prompts of different lengths (<S> = 1 first, as in training).
PROMPTS = [[1, 5, 7, 9], [1, 12], [1, 30, 31]]
MAX_LENGTH = 12


def randomized(model, seed=0, scale=0.4):
    """Random weights everywhere, so that next-token distributions are
    peaked (the gates start at zero)."""
    model.build((None, None))
    rng = np.random.RandomState(seed)
    for weight in model.trainable_weights:
        weight.assign(scale * rng.randn(*weight.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def flat():
    return randomized(MoELanguageModel.from_preset("tiny_moe",
                                                   padding_id=PAD))


@pytest.fixture(scope="module")
def hierarchical_projected():
    """A hierarchical MoE, LSTMs of 24 cells projected to model_dim 16,
    and a feed-forward layer."""
    return randomized(MoELanguageModel.from_preset(
        "tiny_moe_h", padding_id=PAD, lstm_units=24,
        layer_types=("lstm", "moe", "feed_forward", "lstm"),
        feed_forward={"hidden_dim": 32}), seed=1)


@pytest.fixture(params=["flat", "hierarchical_projected"])
def model(request):
    return request.getfixturevalue(request.param)


def log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def infer(model, token_ids):
    """The model's call on whole sequences: logits [batch, time, V].
    Compiled on JAX, whose op-by-op calls are slow."""
    if keras.backend.backend() == "jax":
        return model.predict(token_ids, batch_size=len(token_ids),
                             verbose=0)
    return ops.convert_to_numpy(model(token_ids, training=False))


def teacher_forced_log_probs(model, token_ids):
    """[batch, time, V]: log P(next token | prefix) from the model's call
    on the whole sequence; position t predicts token t + 1."""
    return log_softmax(infer(model, token_ids))


def generated_positions(result, prompts):
    """(row, position) of every generated token."""
    return [(row, position) for row, prompt in enumerate(prompts)
            for position in range(len(prompt), result["lengths"][row])]


def test_buckets():
    assert [batch_bucket(n) for n in (1, 2, 3, 4, 5, 64, 65)] == [
        1, 2, 4, 4, 8, 64, 128]
    assert [length_bucket(n) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]


def test_cached_steps_equal_the_full_forward_pass(model):
    token_ids = np.random.RandomState(2).randint(1, 100,
                                                 size=(3, MAX_LENGTH))
    expected = infer(model, token_ids)

    def steps(token_ids):
        """generation_step over the positions, the logits stacked."""
        def body(position, logits, *state):
            step_logits, state = model.generation_step(
                ops.take(token_ids, position, axis=1), list(state))
            at = ops.equal(ops.arange(MAX_LENGTH), position)[None, :, None]
            logits = ops.where(at, ops.expand_dims(step_logits, 1), logits)
            return (position + 1, logits, *state)

        _, logits, *_ = ops.while_loop(
            lambda position, *_: position < MAX_LENGTH, body,
            (ops.convert_to_tensor(0, "int32"),
             ops.zeros(expected.shape, "float32"),
             *model.initial_generation_state(3)))
        return logits

    steps = stateless_function(model, steps)
    np.testing.assert_allclose(
        ops.convert_to_numpy(steps(ops.convert_to_tensor(token_ids))),
        expected, atol=2e-5)


def test_greedy_takes_the_most_probable_token_at_every_step(model):
    result = model.generate(PROMPTS, MAX_LENGTH, return_log_probs=True)
    tokens = result["token_ids"]
    assert tokens.shape == (3, MAX_LENGTH) and tokens.dtype == np.int32
    for row, prompt in enumerate(PROMPTS):
        assert tokens[row, :len(prompt)].tolist() == prompt
    # No end id: every row runs to max_length.
    assert result["lengths"].tolist() == [MAX_LENGTH] * 3
    log_probs = teacher_forced_log_probs(model, tokens)
    positions = generated_positions(result, PROMPTS)
    assert len(positions) == 3 * MAX_LENGTH - 9
    for row, position in positions:
        step = log_probs[row, position - 1].copy()
        step[PAD] = -np.inf  # never generated
        assert tokens[row, position] == step.argmax()
        np.testing.assert_allclose(
            result["log_probs"][row, position],
            log_probs[row, position - 1, tokens[row, position]], atol=1e-5)
    prompt_positions = np.zeros_like(tokens, bool)
    for row, prompt in enumerate(PROMPTS):
        prompt_positions[row, :len(prompt)] = True
    assert not result["log_probs"][prompt_positions].any()


def test_a_batch_equals_each_prompt_alone(flat):
    together = flat.generate(PROMPTS, MAX_LENGTH)
    for row, prompt in enumerate(PROMPTS):
        alone = flat.generate(np.array(prompt), MAX_LENGTH)
        assert alone.shape == (MAX_LENGTH,)
        np.testing.assert_array_equal(alone, together[row])
    # Right-padded 2-D ids are the same prompts.
    padded = np.zeros((3, 4), "int32")
    for row, prompt in enumerate(PROMPTS):
        padded[row, :len(prompt)] = prompt
    np.testing.assert_array_equal(flat.generate(padded, MAX_LENGTH),
                                  together)


def test_end_id_stops_a_row_and_pads_after_it(flat):
    greedy = flat.generate(PROMPTS, MAX_LENGTH)
    # The first token greedy generates after each prompt, as the end id
    # of that row's generation: each row stops where it first emits it.
    eos_id = int(greedy[0, len(PROMPTS[0])])
    result = flat.generate(PROMPTS, MAX_LENGTH, eos_id=eos_id,
                           return_log_probs=True)
    for row, prompt in enumerate(PROMPTS):
        generated = greedy[row, len(prompt):].tolist()
        if eos_id not in generated:
            np.testing.assert_array_equal(result["token_ids"][row],
                                          greedy[row])
            continue
        end = len(prompt) + generated.index(eos_id) + 1
        np.testing.assert_array_equal(result["token_ids"][row, :end],
                                      greedy[row, :end])
        assert (result["token_ids"][row, end:] == PAD).all()
        assert result["lengths"][row] == end
        assert not result["log_probs"][row, end:].any()
    assert result["lengths"][0] == len(PROMPTS[0]) + 1


def test_temperature_near_zero_is_greedy(flat):
    greedy = flat.generate(PROMPTS, MAX_LENGTH)
    cold = flat.generate(PROMPTS, MAX_LENGTH, seed=5,
                         sampler=samplers.RandomSampler(temperature=1e-4))
    np.testing.assert_array_equal(cold, greedy)


def test_top_k_seeds_reproduce_and_stay_in_the_k_most_probable(flat):
    sampler = {"class_name": "top_k", "config": {"k": 3}}
    results = [flat.generate(PROMPTS, MAX_LENGTH, sampler=sampler,
                             seed=seed, return_log_probs=True)
               for seed in (1, 1, 2)]
    np.testing.assert_array_equal(results[0]["token_ids"],
                                  results[1]["token_ids"])
    assert (results[0]["token_ids"] != results[2]["token_ids"]).any()
    # A sampler's own seed: a fresh sampler with it repeats the first
    # call; the next call draws anew.
    seeded = [samplers.TopKSampler(k=3, seed=9) for _ in range(2)]
    first = flat.generate(PROMPTS, MAX_LENGTH, sampler=seeded[0])
    np.testing.assert_array_equal(
        first, flat.generate(PROMPTS, MAX_LENGTH, sampler=seeded[1]))
    assert (first != flat.generate(PROMPTS, MAX_LENGTH,
                                   sampler=seeded[0])).any()
    for result in results:
        tokens = result["token_ids"]
        log_probs = teacher_forced_log_probs(flat, tokens)
        for row, position in generated_positions(result, PROMPTS):
            step = log_probs[row, position - 1].copy()
            step[PAD] = -np.inf
            assert tokens[row, position] in np.argsort(-step)[:3]
            np.testing.assert_allclose(
                result["log_probs"][row, position],
                step[tokens[row, position]], atol=1e-5)


def test_top_p_stays_in_the_nucleus(flat):
    p = 0.6
    sampler = samplers.TopPSampler(p=p, temperature=1.5)
    tokens = flat.generate(PROMPTS, MAX_LENGTH, sampler=sampler, seed=4)
    log_probs = teacher_forced_log_probs(flat, tokens)
    widths = []
    for row, prompt in enumerate(PROMPTS):
        for position in range(len(prompt), MAX_LENGTH):
            logits = log_probs[row, position - 1] / 1.5
            logits[PAD] = -np.inf
            probabilities = np.exp(log_softmax(logits))
            order = np.argsort(-probabilities)
            before = np.cumsum(probabilities[order]) - probabilities[order]
            nucleus = order[before < p + 1e-4]
            widths.append(len(nucleus))
            assert tokens[row, position] in nucleus
    assert max(widths) > 1  # the test can tell a nucleus from greedy


def test_compiled_once_per_bucket(flat):
    traces = []
    loop = flat._generation_loop

    def counted(*args, **kwargs):
        traces.append(1)
        return loop(*args, **kwargs)

    flat._generation_loop = counted
    statistics = [ops.convert_to_numpy(v)
                  for v in flat.non_trainable_weights]
    try:
        # A sampler configuration no other test uses.
        top_k = samplers.TopKSampler(k=2, temperature=0.9)
        first = flat.generate(PROMPTS, 10, sampler=top_k, seed=0)
        # Batches of 3 and 4 rows, lengths 10 and 16, other prompts,
        # seeds and end ids: one bucket, one trace.
        flat.generate(PROMPTS + [[1, 2]], 16, sampler=top_k, seed=1)
        flat.generate([[1, 3, 5], [1, 4], [1]], 13, sampler=top_k,
                      eos_id=2)
        flat.generate(PROMPTS, 10, seed=2,
                      sampler=samplers.TopKSampler(k=2, temperature=0.9))
        assert len(traces) == 1
        np.testing.assert_array_equal(
            first, flat.generate(PROMPTS, 10, sampler=top_k, seed=0))
        flat.generate(PROMPTS * 2, 10, sampler=top_k)  # 6 rows: bucket 8
        assert len(traces) == 2
    finally:
        del flat._generation_loop
    # Generation changes no variable (the MoE statistics included).
    for before, variable in zip(statistics, flat.non_trainable_weights):
        np.testing.assert_array_equal(before,
                                      ops.convert_to_numpy(variable))


def test_text_prompts_with_a_vocabulary(flat):
    vocabulary = WordVocabulary(
        [f"w{i}" for i in range(60)] + ["the", "cat", "sat"])
    lines = ["the cat", "sat", "w3 unknown w7"]
    text = flat.generate(lines, MAX_LENGTH, vocabulary=vocabulary,
                         return_log_probs=True)
    prompts = [[1] + [vocabulary.token_to_id(word) for word in line.split()]
               for line in lines]
    assert prompts[2] == [1, 7, vocabulary.unk_id, 11]
    # Text goes the id path with <S> first and </S> as the end id.
    ids = flat.generate(prompts, MAX_LENGTH, eos_id=vocabulary.eos_id)
    np.testing.assert_array_equal(text["token_ids"], ids)
    expected = [line.decode() for line in vocabulary.decode(ids).numpy()]
    assert text["text"] == expected
    assert expected[0].startswith("the cat")
    assert expected[2].startswith("w3 <UNK> w7")
    # The model's vocabulary attribute is the default; one string in,
    # one string out.
    flat.vocabulary = vocabulary
    try:
        assert flat.generate("the cat", MAX_LENGTH) == expected[0]
    finally:
        flat.vocabulary = None


@pytest.mark.parametrize("arguments, name", [
    ({"max_length": 0}, "max_length"),
    ({"max_length": 3}, "max_length"),  # shorter than a prompt
    ({"sampler": "beam"}, "sampler"),
    ({"seed": "x"}, "seed"),
    ({"eos_id": 100}, "eos_id"),
    ({"eos_id": PAD}, "eos_id"),
    ({"prompts": [[1, 2], []]}, "prompts"),
    ({"prompts": np.ones((2, 3), "float32")}, "prompts"),
    ({"prompts": [[1, 100]]}, "prompts"),
    ({"prompts": []}, "prompts"),
    ({"prompts": ["the cat"]}, "vocabulary"),
    ({"return_log_probs": 1}, "return_log_probs"),
])
def test_bad_arguments_name_the_argument(flat, arguments, name):
    arguments = dict({"prompts": PROMPTS, "max_length": MAX_LENGTH},
                     **arguments)
    with pytest.raises(ValueError, match=f"`{name}`"):
        flat.generate(**arguments)
