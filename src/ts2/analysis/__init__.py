"""Analyses beyond Table 1 (issue #13): the known-distribution testbed, the token-distribution figure and
the figure helpers that ``ts2.report`` can call (:mod:`ts2.analysis.figures`)."""
