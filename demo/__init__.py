"""The end-to-end demo: the demo catalog generator (:mod:`demo.catalog`, a data tool) and the
orchestration of every job on it (:mod:`demo.run`, ``sku-demo``).  It may import every package
of the project; nothing imports it."""
