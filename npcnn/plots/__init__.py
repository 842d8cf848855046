"""Figures, matplotlib only: the analysis code computes arrays, these modules draw them.

One module per part of the report: :mod:`.training`, and the analysis
modules add their own. Every function takes arrays and returns a Figure;
:func:`npcnn.io.save_figure` writes it atomically as PNG.
"""
import matplotlib

matplotlib.use("Agg")  # files only, never a window: works on a machine with no display
