"""Utilities at the bottom of the package: argument checks, threads, work buffers, atomic file writing.

Nothing here imports from the rest of crfrnn; every layer above may import from here.
"""
