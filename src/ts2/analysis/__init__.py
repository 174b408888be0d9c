"""Analyses beyond Table 1 (issue #13): the data of the figures (best-of-n, the α sweep, token distributions,
the known-distribution testbed) and every figure ``ts2.report`` draws, in one registry (:mod:`ts2.analysis.figures`)."""
