"""`constructor_config`: a class's arguments read back for `get_config`."""

import keras
import pytest

from sgmoe._constructor_config import constructor_config
from sgmoe.layers import SwitchRouter


class _Block(keras.layers.Layer):
    def __init__(self, units, activation="gelu", kernel_initializer="ones",
                 inner=None, shape=(2, 3), *args, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.inner = inner
        self.shape = tuple(shape)


def test_saves_each_argument_in_the_form_keras_loads():
    block = _Block(4, inner=SwitchRouter(8, jitter=0.1))
    config = constructor_config(block, _Block)
    assert list(config) == ["units", "activation", "kernel_initializer",
                            "inner", "shape"]
    assert config["units"] == 4
    assert config["activation"] == "gelu"
    assert config["shape"] == [2, 3]
    assert keras.initializers.deserialize(
        config["kernel_initializer"]).__class__ is keras.initializers.Ones
    inner = keras.saving.deserialize_keras_object(config["inner"])
    assert isinstance(inner, SwitchRouter)
    assert (inner.num_experts, inner.jitter) == (8, 0.1)
    assert "units" not in constructor_config(block, _Block, exclude=("units",))


def test_an_argument_without_its_attribute_is_named():
    block = _Block(4)
    del block.shape
    with pytest.raises(AttributeError, match=r"`shape`.*self\.shape"):
        constructor_config(block, _Block)
