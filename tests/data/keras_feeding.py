"""Feeds both pipelines to tiny Keras models; run in-process or as a script.

`python -m tests.data.keras_feeding DIR` (with KERAS_BACKEND set) writes
tiny corpora to DIR, trains a language model and a translation model on
the datasets for a few steps, and prints one JSON line with the backend and
the mean training losses of the first and the last epoch.
"""

import json
import sys

import keras

from sgmoe.data import SubwordVocabulary
from sgmoe.data import WordVocabulary
from sgmoe.data import language_model_dataset
from sgmoe.data import translation_dataset
from tests.data.files import write_text

GERMAN = ["Guten Morgen.", "Danke schön.", "Wie geht es dir?", "Gute Nacht.",
          "Bis morgen.", "Ich weiß es nicht."]
ENGLISH = ["Good morning.", "Thank you.", "How are you?", "Good night.",
           "See you tomorrow.", "I don't know."]


def masked_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                      ignore_class=0)


def fit(model, dataset):
    """Mean training losses of the first and the last of 3 short epochs."""
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=masked_loss())
    history = model.fit(dataset, steps_per_epoch=10, epochs=3, verbose=0,
                        shuffle=False)  # the dataset shuffles itself
    return history.history["loss"][0], history.history["loss"][-1]


def train_language_model(directory):
    path = write_text(f"{directory}/lm.txt", [
        "the cat sat on the mat", "the dog sat on the log",
        "a cat and a dog", "the mat and the log"])
    vocabulary = WordVocabulary.build(path)
    # One bucket: every batch has the same shape, so it compiles once.
    train = language_model_dataset(path, vocabulary, batch_size=2,
                                   max_length=8, shuffle=True, repeat=True,
                                   seed=1, block_size=4,
                                   bucket_boundaries=[8])
    tokens = keras.Input((None,), dtype="int32")
    hidden = keras.layers.Embedding(vocabulary.size, 16)(tokens)
    model = keras.Model(tokens, keras.layers.Dense(vocabulary.size)(hidden))
    return fit(model, train)


def train_translation_model(directory):
    source = write_text(f"{directory}/pairs.de", GERMAN)
    target = write_text(f"{directory}/pairs.en", ENGLISH)
    vocabulary = SubwordVocabulary.train([source, target], vocabulary_size=48,
                                         byte_fallback=False, num_threads=1)
    train = translation_dataset(source, target, vocabulary, batch_size=3,
                                max_length=12, shuffle=True, repeat=True,
                                seed=1, block_size=6,
                                bucket_boundaries=[12])
    source_ids = keras.Input((None,), dtype="int32")
    target_inputs = keras.Input((None,), dtype="int32")
    embedding = keras.layers.Embedding(vocabulary.size, 16)
    # Decoder input: each target token's embedding plus the source's mean.
    context = keras.ops.mean(embedding(source_ids), axis=1, keepdims=True)
    hidden = embedding(target_inputs) + context
    model = keras.Model([source_ids, target_inputs],
                        keras.layers.Dense(vocabulary.size)(hidden))
    return fit(model, train)


def run(directory):
    keras.utils.set_random_seed(1)
    return {"backend": keras.backend.backend(),
            "language_model": train_language_model(directory),
            "translation": train_translation_model(directory)}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1])))
