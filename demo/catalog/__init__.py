"""A deterministic synthetic catalog of packaged goods for demos, tests and benchmarks.

Draws product packshots (bottles, cans, jars, tubes, bags, boxes, cartons) of generated brands
and writes them in the emoji-catalog layout that the rest of the project reads:
``catalog/`` (one clean packshot per SKU), ``train/`` (long-tailed augmented seller photos
with noisy titles) and ``queries/`` ("real-shot" photos with the product's true box), each with
a ``manifest.jsonl`` readable by :func:`service.catalog.read_jsonl`.  Needs only numpy and
Pillow.  Command line: ``sku-demo-catalog --help``.
"""

from .generate import generate_demo_catalog

__all__ = ["generate_demo_catalog"]
