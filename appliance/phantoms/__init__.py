"""Procedural phantoms: synthetic abdominal CT and ultrasound cine with exact ground truth.

No clinical weights or data can be had here, so the reference models are trained and tested on
these. They are calibrated to published values (../shared/MODELS.md) and are synthetic: nothing
trained on them is for clinical use.
"""
