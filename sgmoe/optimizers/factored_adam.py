"""Factored Adam (Shazeer et al. 2017, Appendix D)."""

import re

import keras
from keras import ops

from sgmoe import _validation

# Keeps the outer-product estimate finite when a whole gradient row is zero.
_TINY = 1e-30


@keras.saving.register_keras_serializable(package="sgmoe")
class FactoredAdam(keras.optimizers.Optimizer):
    """Adam without first moments and with factored second moments.

    Shazeer et al. 2017, "Outrageously Large Neural Networks", Appendix D:
    to fit billions of expert parameters, the first-moment estimate is
    dropped (beta_1 = 0: the step uses the current gradient), and for each
    parameter matrix only the row-wise and column-wise averages of the
    second-moment estimate are kept. The matrix of estimators is their outer
    product divided by the mean of either one:

        R_t = beta_2 R_{t-1} + (1 - beta_2) mean_cols(g_t^2)     [rows]
        C_t = beta_2 C_{t-1} + (1 - beta_2) mean_rows(g_t^2)     [cols]
        V_t = R_t C_t^T / mean(R_t)
        w_t = w_{t-1} - lr * g_t / (sqrt(V_t / (1 - beta_2^t)) + epsilon)

    Weights of rank >= 2 are factored over their last two axes: an expert
    kernel [E, d, h] keeps [E, d] and [E, h] statistics, one pair per expert,
    so the state is about (d + h) / (d * h) of the weight. Vectors and
    scalars keep a full second moment. No slot has the full shape of a
    factored weight (unlike `keras.optimizers.Adafactor`, which allocates a
    full-size slot per weight).

    The paper gives no beta_2 or epsilon. Defaults: beta_2 = 0.999 and
    epsilon = 1e-8, those of Adam (Kingma & Ba 2015), which the paper
    describes its optimizer as a modification of; with the bias correction
    the estimate is unbiased from the first step, so no slower-starting
    decay schedule (as Adafactor's 1 - t^-0.8) is needed.

    `factored_variables` chooses which weights get this update. None (the
    default) factors every weight of rank >= 2 as above. A regular
    expression restricts the factored update to the weights whose path
    matches it (e.g. r"experts/kernel", as the paper's 100-billion-word
    runs did for the experts) and gives every other weight plain Adam, with
    first moments (beta_1 = `adam_beta_1`) and a full second moment.

    Args:
        learning_rate: float or `LearningRateSchedule` (e.g.
            `sgmoe.optimizers.WarmupInverseSquareRoot`).
        beta_2: decay of the second-moment estimates, in [0, 1).
        epsilon: added to the root of the second-moment estimate (> 0).
        factored_variables: None, or a regular expression on variable paths.
        adam_beta_1: beta_1 of the plain Adam update for the weights that
            `factored_variables` leaves out, in [0, 1).
        name: optimizer name.
        **kwargs: base `keras.optimizers.Optimizer` arguments (clipnorm,
            weight_decay, ...).

    Example:

    >>> optimizer = FactoredAdam(learning_rate=1e-3)
    >>> model.compile(optimizer=optimizer, loss="mse")  # doctest: +SKIP
    """

    def __init__(
        self,
        learning_rate=1e-3,
        beta_2=0.999,
        epsilon=1e-8,
        factored_variables=None,
        adam_beta_1=0.9,
        name="factored_adam",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_2 = _validation.check_unit_interval("beta_2", beta_2)
        self.epsilon = _validation.check_positive_float("epsilon", epsilon)
        if factored_variables is not None:
            try:
                re.compile(factored_variables)
            except (re.error, TypeError) as error:
                raise ValueError(
                    "`factored_variables` must be None or a regular "
                    f"expression, received {factored_variables!r}: {error}")
        self.factored_variables = factored_variables
        self.adam_beta_1 = _validation.check_unit_interval("adam_beta_1",
                                                        adam_beta_1)

    def is_factored(self, variable):
        """Whether `variable` gets the factored update."""
        if len(variable.shape) < 2:
            return False
        if self.factored_variables is None:
            return True
        return re.search(self.factored_variables, variable.path) is not None

    def _uses_adam(self, variable):
        return (self.factored_variables is not None
                and not self.is_factored(variable))

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        # One entry per variable, in var_list order; None where unused.
        self._row_moments, self._column_moments = [], []
        self._second_moments, self._first_moments = [], []
        for variable in var_list:
            factored = self.is_factored(variable)
            shape = tuple(variable.shape)
            self._row_moments.append(self._slot(
                variable, shape[:-1], "row_second_moment") if factored else None)
            self._column_moments.append(self._slot(
                variable, shape[:-2] + shape[-1:], "column_second_moment")
                if factored else None)
            self._second_moments.append(None if factored else self._slot(
                variable, shape, "second_moment"))
            self._first_moments.append(self._slot(
                variable, shape, "first_moment")
                if self._uses_adam(variable) else None)

    def _slot(self, variable, shape, kind):
        name = variable.path.replace("/", "_") + "_" + kind
        return self.add_variable(shape=shape, dtype=variable.dtype, name=name,
                                 layout=_slot_layout(variable, shape))

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(_dense(gradient), dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        squared = ops.square(gradient)

        rows = self._row_moments[index]
        if rows is not None:
            columns = self._column_moments[index]
            self.assign(rows, beta_2 * rows
                        + (1.0 - beta_2) * ops.mean(squared, axis=-1))
            self.assign(columns, beta_2 * columns
                        + (1.0 - beta_2) * ops.mean(squared, axis=-2))
            row_mean = ops.mean(rows, axis=-1, keepdims=True)  # [..., 1]
            second_moment = (
                ops.expand_dims(rows / (row_mean + _TINY), -1)
                * ops.expand_dims(columns, -2))
        else:
            second_moment = self._second_moments[index]
            self.assign(second_moment, beta_2 * second_moment
                        + (1.0 - beta_2) * squared)
        second_moment = second_moment / (1.0 - ops.power(beta_2, step))

        direction = gradient
        first_moment = self._first_moments[index]
        if first_moment is not None:
            beta_1 = ops.cast(self.adam_beta_1, dtype)
            self.assign(first_moment, beta_1 * first_moment
                        + (1.0 - beta_1) * gradient)
            direction = first_moment / (1.0 - ops.power(beta_1, step))
        self.assign_sub(variable, lr * direction
                        / (ops.sqrt(second_moment) + self.epsilon))

    def get_config(self):
        config = super().get_config()
        config.update({
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "factored_variables": self.factored_variables,
            "adam_beta_1": self.adam_beta_1,
        })
        return config


def _slot_layout(variable, shape):
    """The variable's `keras.distribution` layout, cut down to a slot's shape.

    A factored slot drops one of the variable's last two axes, and drops that
    axis from the layout too, so an expert kernel sharded along its expert
    axis has its [E, d] and [E, h] statistics sharded the same way. None when
    the variable has no layout (no distribution).
    """
    layout = getattr(variable, "_layout", None)
    if not isinstance(layout, keras.distribution.TensorLayout):
        return None
    axes = tuple(layout.axes)
    full_shape = tuple(variable.shape)
    if shape == full_shape:
        return layout
    if shape == full_shape[:-1]:
        axes = axes[:-1]
    else:  # the column statistic: [..., cols]
        axes = axes[:-2] + axes[-1:]
    return keras.distribution.TensorLayout(axes, layout.device_mesh)


def _dense(gradient):
    """TensorFlow gives embeddings sparse (IndexedSlices) gradients; the row
    and column statistics need the whole matrix anyway."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return tf.convert_to_tensor(gradient)
    return gradient
