"""What the indexer and the search API share: settings, the encoder, image decoding and the Milvus gateway."""

import os
import sys

# numpy's OpenBLAS threads busy-wait after each call (2**28 cycles, ~0.1 s, by default), and on a machine
# with few cores that spinning is taken from the next text encode: a 100,000-row search with numpy made the
# encode after it 3x slower. Spinning 2**4 cycles before they sleep removes that. OpenBLAS reads the
# variable once, when numpy is first imported, so `BLAS_THREADS_SLEEP` records whether it took effect.
BLAS_THREADS_SLEEP = "numpy" not in sys.modules or "OPENBLAS_THREAD_TIMEOUT" in os.environ
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
