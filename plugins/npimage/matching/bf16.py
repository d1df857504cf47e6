"""Cosine blocks in bfloat16, for compare's dense path on CPUs that multiply it natively.

With FV-heavy weights every pair of a nightly is scored densely (docs/BENCHMARKS.md, "The
worst case"), and the float32 matrix product is most of its time: 10^10 pairs x 1280
dimensions. CPUs with AMX or AVX512-BF16 multiply bfloat16 matrices about 3x faster
(oneDNN through TensorFlow, already a dependency: ~420 against ~130 GFLOP/s a core on the
Xeon of docs/BENCHMARKS.md). The product then only *selects*: a cosine computed so is
within MARGIN of the exact one, dense_select bounds each pair with cosine + MARGIN, and
every selected pair is scored again exactly from its float16 rows (`pair_scores`). So
the matches are the same as with float32, only found faster.

NPIMAGE_COMPARE_BF16=0 turns it off; =1 uses it for every dense comparison (where the CPU
has bfloat16; the tests do so on small ones). TensorFlow's import (~3 s) is paid by a
process only for a comparison of FROM_PAIRS pairs or more.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

#: Bound on |bfloat16 cosine - exact cosine| of two unit vectors: each input rounded to
#: nearest (relative error 2^-8 per element, so at most 2 x 2^-8 over the dot product by
#: Cauchy-Schwarz, plus their product), the float32 accumulation (1280 x 2^-24) and the
#: result rounded to bfloat16 (2^-8 of a value at most 1), with room to spare.
MARGIN = 3 * 2.0**-8 + 2.0**-10
#: Comparisons of at least this many pairs (queries x catalogue rows) scored densely use
#: bfloat16: their float32 products take ~10 s of CPU or more, TensorFlow's import ~3 s.
FROM_PAIRS = 1 << 29


def setting() -> str:
    """NPIMAGE_COMPARE_BF16: "auto" (default), "0" (never) or "1" (always)."""
    value = os.environ.get("NPIMAGE_COMPARE_BF16", "auto").strip().lower()
    return {"off": "0", "false": "0", "no": "0", "on": "1", "true": "1", "yes": "1"}.get(
        value, value)


def wanted(pairs: int) -> bool:
    """Whether a comparison of this many pairs, scored densely, takes its cosines in
    bfloat16 (where the CPU has it)."""
    from npimage.fv.tflite import bf16_supported

    choice = setting()
    if choice == "0" or not bf16_supported():
        return False
    return choice == "1" or pairs >= FROM_PAIRS


def rows(unit: np.ndarray) -> Any:
    """Unit rows (float32) as a bfloat16 TensorFlow tensor, made once per tile of queries."""
    from npimage.fv.quiet import tensorflow

    tf = tensorflow()
    return tf.cast(tf.constant(unit), tf.bfloat16)


def cosines(queries: Any, unit: np.ndarray) -> np.ndarray:
    """(queries x rows) float32 cosines of bfloat16 query rows (`rows`) and float32 unit
    rows, each within MARGIN of the exact cosine."""
    from npimage.fv.quiet import tensorflow

    tf = tensorflow()
    block = tf.cast(tf.constant(unit), tf.bfloat16)
    out: np.ndarray = tf.cast(tf.linalg.matmul(queries, block, transpose_b=True),
                              tf.float32).numpy()
    return out
