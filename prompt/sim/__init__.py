"""A synthetic observatory, deterministic by seed: calibrations, templates and raws as FITS in
a bucket-like data root, with injected transients recorded in a truth table."""

from prompt.sim.camera import SimCamera
from prompt.sim.observatory import SimVisit, generate, read_truth
from prompt.sim.scene import SimConfig

__all__ = ["SimCamera", "SimConfig", "SimVisit", "generate", "read_truth"]
