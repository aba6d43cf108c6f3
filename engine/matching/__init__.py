"""Coarse-to-fine dense-descriptor matching between a reference and a moving image."""
