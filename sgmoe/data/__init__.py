"""tf.data pipelines and tokenizers for language modeling and translation.

Text files -> checked in Python (`text_files`) -> `tf.data` pipelines that
tokenize with tensorflow-text, bucket by length and pad with 0. Pure
TensorFlow, so the datasets feed Keras models on the TensorFlow and the JAX
backend alike.
"""

from sgmoe.data._pipeline import MAX_SHUFFLE_BLOCK
from sgmoe.data.data_error import DataError
from sgmoe.data.language_model_dataset import language_model_dataset
from sgmoe.data.mean_tokens_per_sentence import mean_tokens_per_sentence
from sgmoe.data.one_billion_word import OneBillionWordPatterns
from sgmoe.data.one_billion_word import one_billion_word_patterns
from sgmoe.data.parallel_files import parallel_files
from sgmoe.data.parallel_files import read_sentence_pairs
from sgmoe.data.pad_batches import pad_batches
from sgmoe.data.split_into_sentences import split_into_sentences
from sgmoe.data.subword_vocabulary import SubwordVocabulary
from sgmoe.data.text_files import DEFAULT_MAX_LINE_LENGTH
from sgmoe.data.text_files import TextFileSummary
from sgmoe.data.text_files import check_parallel_files
from sgmoe.data.text_files import check_text_files
from sgmoe.data.text_files import count_lines
from sgmoe.data.text_files import expand_file_patterns
from sgmoe.data.text_files import read_text_lines
from sgmoe.data.translation_dataset import translation_dataset
from sgmoe.data.word_vocabulary import WordVocabulary
