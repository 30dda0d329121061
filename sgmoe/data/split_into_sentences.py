"""Sentences of a paragraph, for text with a paragraph per line."""


def split_into_sentences(text):
    """The sentences of `text`, in order, stripped, blank ones left out.

    Corpora such as speeches or encyclopedia dumps hold a paragraph or a
    whole document per line, while a language model's example is a
    sentence. The boundaries are those of `sentencex` (Wikimedia's
    rule-based segmenter, English rules: abbreviations such as "Mr." or
    "U.S." and numbers such as "3.5" do not end a sentence). Every
    non-whitespace character of `text` is kept, in order; a boundary can
    fall between two characters without a space between them ("end.Next"),
    so the words `str.split()` gives of the sentences can differ from
    those of `text`. With `split_sentences=True`, `language_model_dataset`,
    `WordVocabulary.build` and `mean_tokens_per_sentence` all split lines
    with this function, so they see the same sentences.

    Args:
        text: a `str`, e.g. one line of a file.

    Returns:
        A list of `str`, each non-blank and without leading or trailing
        whitespace; empty for blank `text`.

    Example:

    >>> split_into_sentences("Mr. Smith arrived . He sat down. Did he ?")
    ['Mr. Smith arrived .', 'He sat down.', 'Did he ?']
    """
    if not isinstance(text, str):
        raise ValueError(f"`text` must be a str, received "
                         f"{type(text).__name__}.")
    if not text.strip():
        return []
    import sentencex  # in the [tf] extra, with the rest of sgmoe.data

    return [sentence.strip() for sentence in sentencex.segment("en", text)
            if sentence.strip()]
