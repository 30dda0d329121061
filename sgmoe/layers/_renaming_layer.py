"""The base of `Router` and `MoELayer`: configs saved under old names load."""

import keras

from sgmoe._renamed_arguments import renamed_arguments


class RenamingLayer(keras.layers.Layer):
    """A layer whose `from_config` reads arguments saved under old names.

    A subclass lists its renamed arguments as `saved_argument_renames`,
    {old name: new name}, so `.keras` files saved before a rename load.
    """

    saved_argument_renames = {}

    @classmethod
    def from_config(cls, config):
        return super().from_config(
            renamed_arguments(config, cls.saved_argument_renames))
