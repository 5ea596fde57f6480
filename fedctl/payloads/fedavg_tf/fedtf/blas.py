"""One BLAS thread for numpy in the payload's processes (import this before numpy).

The payload's numpy work is vector-sized (an update's norm, the weighted mean of a round's
updates); TensorFlow does the heavy lifting on its own thread pools. A multi-threaded OpenBLAS
beside them only competes: its workers spin-wait for work, and on a 2-core host where the server
checks four uploads at once while TensorFlow evaluates, each update's check took 30-60 ms instead
of about 1 ms (measured with py-spy: every sampled handler sat in the norm's `np.dot`).

FEDTF_BLAS_THREADS sets another count (OpenBLAS and MKL read it before numpy loads).
"""
from __future__ import annotations

import os
import sys


def limit_threads() -> None:
    """Set numpy's BLAS thread count (FEDTF_BLAS_THREADS, default 1); too late once numpy is
    imported, which is then left as it is."""
    if "numpy" in sys.modules:
        return
    n = os.environ.get("FEDTF_BLAS_THREADS", "1")
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = n
