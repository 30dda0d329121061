"""The one exception type of `sgmoe.data` for unusable input files."""


class DataError(ValueError):
    """Input text that `sgmoe.data` cannot use, named in one readable line.

    Raised before any TensorFlow op runs, for a missing file, a glob that
    matches nothing, an empty file, bytes that are not UTF-8, a line longer
    than `max_line_length`, parallel files whose line counts differ, or a
    vocabulary file in the wrong format. The message starts with the file
    (and line number, where there is one) and holds no newline, so a script
    can print it as its last line:

    try:
        vocabulary = sgmoe.data.WordVocabulary.build("train/*.txt")
    except sgmoe.data.DataError as error:
        sys.exit(f"train_lm: {error}")
    """
