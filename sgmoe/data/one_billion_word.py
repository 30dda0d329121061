"""The file layout of the One Billion Word benchmark (Chelba et al. 2013).

The benchmark's archive `1-billion-word-language-modeling-benchmark-r13output`
holds the training text in 99 shards,
`training-monolingual.tokenized.shuffled/news.en-00001-of-00100` to
`news.en-00099-of-00100`, and the held-out text (what was shard 0) in 50
shards, `heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050`
to `-00049-of-00050`. Papers, Shazeer et al. 2017 and Jozefowicz et al.
2016 among them, report test perplexity on `news.en.heldout-00000-of-00050`.
Text is tokenized, one sentence per line; there are no `<S>`/`</S>`
markers in the files: `language_model_dataset` adds them.
"""

import collections
import os

TRAIN_PATTERN = "training-monolingual.tokenized.shuffled/news.en-*"
HELDOUT_PATTERN = "heldout-monolingual.tokenized.shuffled/news.en.heldout-*"
TEST_PATTERN = ("heldout-monolingual.tokenized.shuffled/"
                "news.en.heldout-00000-of-00050")

OneBillionWordPatterns = collections.namedtuple(
    "OneBillionWordPatterns", ["train", "heldout", "test"])


def one_billion_word_patterns(directory):
    """The benchmark's file patterns under its extracted directory.

    Args:
        directory: the `1-billion-word-language-modeling-benchmark-r13output`
            directory (or any directory with the same two sub-directories).

    Returns:
        `OneBillionWordPatterns(train, heldout, test)`: globs for
        `expand_file_patterns`, `WordVocabulary.build` and
        `language_model_dataset`.

    Example:

    patterns = one_billion_word_patterns("lm1b")
    vocabulary = WordVocabulary.build(patterns.train, min_count=3)
    test = language_model_dataset(patterns.test, vocabulary, 64, 100)
    """
    return OneBillionWordPatterns(
        *(os.path.join(directory, pattern)
          for pattern in (TRAIN_PATTERN, HELDOUT_PATTERN, TEST_PATTERN)))
