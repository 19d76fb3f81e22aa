"""Embedded synthetic sources (no download): ``synth-signs`` (GTSRB-like) and ``synth-faces``."""
