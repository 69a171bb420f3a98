"""allgui trainer: the ML core and its command-line interface.

Pre-processing, segmentation, deep features, ensemble, calibration, evaluation. Knows nothing of Qt.
"""
import os as _os

__version__ = "0.1.0"

# OpenMP threads that wait for work by sleeping, not spinning: on a desktop with few cores that
# is also running the GUI, decoding, segmentation or another program, spinning threads turn every
# parallel region of a forward pass into a fight for the cores (many times slower on a busy machine
# with few cores; see benchmarks/README.md). Read by the OpenMP runtime when torch loads, so it is set before;
# an explicit setting in the environment wins. Its price, waking the team for each of the many small
# operations of a batch-of-one pass, is avoided by running the networks side by side on one thread
# each (trainer.util.threads.network_lanes).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
