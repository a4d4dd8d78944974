"""Inference core of the SKU recognition service.

Imports neither torch nor FastAPI: training and the index builder import this package, never
the reverse.  The web layer lives in :mod:`service.api`.
"""

__version__ = "0.1.0"
