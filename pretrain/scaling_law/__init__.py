"""Scaling-law fitting of loss curves: the annealing law and the multi-power law (issue 9)."""
