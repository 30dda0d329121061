"""A callback that keeps Keras from reading batch logs in another thread."""

import keras


class SynchronousBatches(keras.callbacks.Callback):
    """Makes `evaluate` and `predict` read each batch's logs in order.

    With no batch-level callback, Keras 3 on JAX reads batch i's logs (a
    device-to-host copy) in a worker thread while it dispatches batch
    i + 1. A callback with a batch-end hook turns that off. This one
    defines only the test and predict batch-end hooks, as no-ops, so it
    changes nothing else. Use it for `evaluate` and `predict` on a mesh of
    virtual CPU devices (`--xla_force_host_platform_device_count`), where
    the overlapped copy can stall the next step's collectives
    (`docs/meshes.md`).

    Example:

    model.evaluate(dataset, callbacks=[SynchronousBatches()])
    """

    def on_test_batch_end(self, batch, logs=None):
        pass

    def on_predict_batch_end(self, batch, logs=None):
        pass
