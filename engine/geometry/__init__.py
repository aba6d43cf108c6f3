"""Geometric models between the reference and target pixel grids, and their robust fitting."""
