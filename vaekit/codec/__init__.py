"""Lossless compression with a trained model: a vectorised rANS coder (`rans`), bits-back coding and
a container format (to come)."""
