"""The collectives XLA inserted into a compiled SPMD program, from its HLO.

A helper of `bench/mesh_scaling.py` and of the mesh tests.
"""

import math
import re

COLLECTIVES = ("all-to-all", "all-gather", "all-reduce", "reduce-scatter",
               "collective-permute")
_INSTRUCTION = re.compile(
    r"=\s*(?P<type>\(.*?\)|\S+)\s+(?P<op>" + "|".join(COLLECTIVES)
    + r")(?:-start)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>pred|[a-z]+[0-9]+)\[(?P<dims>[0-9,]*)\]")
_BITS = re.compile(r"[0-9]+$")


def collectives(hlo_text):
    """[(op, dtype, shape, bytes)] of every collective in a compiled module.

    Shapes are per device (the partitioned program's), one entry per array
    of a tuple-shaped collective; async pairs count once (at their start).
    """
    found = []
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.search(line)
        if not match:
            continue
        result_type = match.group("type")
        arrays = _ARRAY.findall(result_type)
        if match.group(0).rstrip("(").endswith("-start") and len(arrays) > 1:
            # An async start returns (operand, result[, context]): the
            # result is the moved array.
            arrays = arrays[1:2]
        for dtype, dims in arrays:
            shape = tuple(int(n) for n in dims.split(",") if n)
            bits = 8 if dtype == "pred" else int(_BITS.search(dtype).group())
            found.append((match.group("op"), dtype, shape,
                          math.prod(shape) * bits // 8))
    return found
