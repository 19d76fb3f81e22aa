"""datasets_gen: the OpenCV generator of poisoned data sets.

Readers for the real GTSRB / YouTube Aligned Faces / LFW layouts, the embedded synthetic data sets,
triggers and compositing, and the HDF5 writer with manifest, dataset card and preview grid. It
imports numpy, OpenCV and h5py only: never torch, never ``backdoorlab``.
"""

__version__ = "0.1.0"
