"""A callback that keeps Keras from reading batch logs in another thread."""

import keras


class SynchronousBatches(keras.callbacks.Callback):
    """Makes `evaluate` and `predict` read each batch's logs in order.

    With no batch-level callback, Keras 3 on JAX reads the logs of batch i
    (a device-to-host copy) in a worker thread while batch i + 1 is
    dispatched. On a mesh of virtual CPU devices
    (`--xla_force_host_platform_device_count`) the two can interleave their
    work on the device threads, and a collective of the next step then
    waits for device threads that never arrive: XLA aborts the process
    after a 40 s rendezvous timeout (seen with `scripts/train_lm.py
    --mesh=batch:2,model:4` on 8 virtual devices). `fit` was not affected
    because the scripts' training callbacks already run per batch.
    Passing this callback, which only defines the batch-end hooks, turns
    that asynchronous dispatch off.

    Example:

    >>> model.evaluate(dataset, callbacks=[SynchronousBatches()])
    """

    def on_test_batch_end(self, batch, logs=None):
        pass

    def on_predict_batch_end(self, batch, logs=None):
        pass
