"""Bucketed sizes: inputs are padded to a few shapes, so that a compiled
generation or decoding loop is traced once per bucket, not once per call."""


def batch_bucket(batch_size):
    """Rows a batch is padded to: the next power of two (1, 2, 4, ...)."""
    return 1 << max(int(batch_size) - 1, 0).bit_length()


def length_bucket(length, minimum=16):
    """Positions a sequence buffer is padded to: the next power of two, at
    least `minimum` (16, 32, 64, ...)."""
    return max(int(minimum), batch_bucket(length))


def multiple_bucket(length, step=8):
    """Positions a batch is padded to: the next multiple of `step` (at
    least one step)."""
    return step * max(1, -(-int(length) // step))
