"""Roots from images: references, image sources, the store and its layers."""
