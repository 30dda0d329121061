"""What each expert of a language model serves: the paper's Table 9.

Shazeer et al. 2017 (arXiv:1701.06538), Table 9, lists for a few experts
the contexts of the tokens with the highest gate values: experts
specialise in syntax and semantics ("... plays a significant role",
"... with rapidly growing ..."). `route_sentences` records, for every
token of a text and every MoE layer, the experts the model sends it to
and their gate values; `expert_profiles` turns that into a table per
expert; `expert_load_history` reads each expert's share of the
assignments over training from the logs `sgmoe.training.MoETensorBoard`
wrote.
"""

import dataclasses

import numpy as np

from sgmoe.evaluation.logged_history import logged_history
from sgmoe.layers.moe_layer import find_moe_layers
from sgmoe.layers.moe_layer import route_tokens


@dataclasses.dataclass
class LayerRouting:
    """The assignments of one MoE layer over the tokens of a text.

    Attributes:
        num_experts: E.
        token: int64 [A], the token (an index into `RoutedText.token_ids`)
            of each assignment.
        expert: int64 [A], its expert.
        weight: float64 [A], its gate value.
    """

    num_experts: int
    token: np.ndarray
    expert: np.ndarray
    weight: np.ndarray


@dataclasses.dataclass
class RoutedText:
    """Tokens of a text and how each MoE layer routed them.

    Attributes:
        token_ids: int64 [T], every input token, sentence after sentence.
        sentence: int64 [T], the sentence of each token.
        position: int64 [T], its position in the sentence's input ids.
        sentences: the input ids of each sentence.
        layers: {MoE layer name: `LayerRouting`}.
    """

    token_ids: np.ndarray
    sentence: np.ndarray
    position: np.ndarray
    sentences: list
    layers: dict


@dataclasses.dataclass
class ExpertProfile:
    """One expert of one layer, as `expert_profiles` describes it.

    Attributes:
        expert: its index.
        assignments: the number of tokens routed to it.
        share: assignments over all assignments of the layer.
        mean_weight: its mean gate value over those assignments.
        words: [(token id, mean gate value over every occurrence of the
            token, 0 where it went elsewhere, occurrences)], the tokens
            with the highest such mean: the expert's characteristic words.
        contexts: [(token index, gate value)], the assignments with the
            highest gate values.
    """

    expert: int
    assignments: int
    share: float
    mean_weight: float
    words: list
    contexts: list


def route_sentences(model, sentences, batch_size=32, pad_id=0):
    """Runs `model` in inference on `sentences` and records the routing.

    Args:
        model: a model with MoE layers whose input is token ids [B, T]
            and whose MoE layers see one vector per input token (a
            `MoELanguageModel`).
        sentences: lists of input token ids (e.g. `<S>` and the words of
            a sentence).
        batch_size: sentences per call; shorter ones are padded with
            `pad_id` (padding positions are not recorded).
        pad_id: the padding id.

    Returns:
        A `RoutedText`.
    """
    sentences = [np.asarray(ids, np.int64) for ids in sentences]
    if not sentences or not any(len(ids) for ids in sentences):
        raise ValueError("`sentences` has no tokens to route.")
    offsets = np.cumsum([0] + [len(ids) for ids in sentences])
    moe_layers = find_moe_layers(model)
    records = {name: [] for name in moe_layers}
    for start in range(0, len(sentences), batch_size):
        batch = sentences[start:start + batch_size]
        length = max(len(ids) for ids in batch)
        ids = np.full((len(batch), length), pad_id, np.int32)
        for row, sentence in enumerate(batch):
            ids[row, :len(sentence)] = sentence
        for name, routing in route_tokens(model, ids).items():
            indices = np.asarray(routing.expert_indices)
            weights = np.asarray(routing.expert_weights, np.float64)
            if indices.shape[:2] != ids.shape:
                raise ValueError(
                    f"MoE layer {name} routed {indices.shape[:2]} tokens for "
                    f"inputs of shape {ids.shape}: route_sentences needs a "
                    "model whose MoE layers see one vector per input token.")
            parts = records[name]
            for row, sentence in enumerate(batch):
                n = len(sentence)
                row_indices, row_weights = indices[row, :n], weights[row, :n]
                used = row_indices >= 0
                tokens = offsets[start + row] + np.nonzero(used)[0]
                parts.append((tokens, row_indices[used], row_weights[used]))
    token_ids = np.concatenate(sentences)
    sentence = np.repeat(np.arange(len(sentences)),
                         [len(ids) for ids in sentences])
    position = np.arange(len(token_ids)) - offsets[sentence]
    layers = {
        name: LayerRouting(
            moe_layers[name].num_experts,
            *(np.concatenate([part[i] for part in parts]).astype(dtype)
              for i, dtype in ((0, np.int64), (1, np.int64),
                               (2, np.float64))))
        for name, parts in records.items()}
    return RoutedText(token_ids, sentence, position, sentences, layers)


def expert_profiles(text, layer_name, min_count=5, num_words=8,
                    num_contexts=3):
    """A profile of every expert of a layer, most used first.

    A word's score for expert e is the mean, over all its occurrences in
    the text, of the gate value e received (0 where the token went to
    other experts): high for words the expert serves consistently and
    with weight. Words seen fewer than `min_count` times are not ranked.

    Args:
        text: a `RoutedText` from `route_sentences`.
        layer_name: one of `text.layers`.
        min_count: least occurrences of a ranked word.
        num_words: characteristic words per expert.
        num_contexts: highest-gate assignments per expert.

    Returns:
        A list of `ExpertProfile`, one per expert, by decreasing
        assignments (ties by index).
    """
    if layer_name not in text.layers:
        raise ValueError(f"`layer_name`={layer_name!r} is not a MoE layer of "
                         f"the routed text; found {sorted(text.layers)}.")
    routing = text.layers[layer_name]
    vocabulary, token_word = np.unique(text.token_ids, return_inverse=True)
    occurrences = np.bincount(token_word, minlength=len(vocabulary))
    total = max(len(routing.expert), 1)
    profiles = []
    for expert in range(routing.num_experts):
        mine = routing.expert == expert
        tokens, weights = routing.token[mine], routing.weight[mine]
        word_weight = np.bincount(token_word[tokens], weights=weights,
                                  minlength=len(vocabulary))
        score = np.where(occurrences >= min_count,
                         word_weight / np.maximum(occurrences, 1), -1.0)
        ranked = [w for w in np.argsort(-score, kind="stable")[:num_words]
                  if score[w] > 0]
        top = np.argsort(-weights, kind="stable")[:num_contexts]
        profiles.append(ExpertProfile(
            expert=expert, assignments=int(mine.sum()),
            share=float(mine.sum()) / total,
            mean_weight=float(weights.mean()) if len(weights) else 0.0,
            words=[(int(vocabulary[w]), float(score[w]), int(occurrences[w]))
                   for w in ranked],
            contexts=[(int(tokens[i]), float(weights[i])) for i in top]))
    profiles.sort(key=lambda profile: -profile.assignments)
    return profiles


def context_of(text, token, left=4):
    """Input ids of up to `left` tokens before `token`, and the token."""
    sentence = text.sentences[text.sentence[token]]
    position = text.position[token]
    return sentence[max(0, position - left):position + 1]


def expert_load_history(log_dir, layer_name,
                        statistic="expert_dispatched"):
    """Each expert's share of a layer's assignments over training.

    Reads the per-expert histograms `moe/<layer>/<statistic>` that
    `sgmoe.training.MoETensorBoard` writes (bucket i holds expert i's
    mean per step over a logging window) from the event files in
    `log_dir`. A step logged twice (a resumed run) keeps its last value.

    Returns:
        (steps int64 [S], shares float64 [S, E], each row summing to 1),
        or None if the logs hold no such histogram.
    """
    history = logged_history(log_dir, f"moe/{layer_name}/{statistic}")
    if history is None:
        return None
    steps = np.array(list(history), np.int64)
    # A histogram's buckets are rows (left edge, right edge, count).
    counts = np.stack([buckets[:, 2] for buckets in history.values()]
                      ).astype(np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1e-12)
    return steps, shares
