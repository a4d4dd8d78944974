"""The nightly SKU index builder (``sku-index``): catalog → embeddings → Redis + FAISS version.

Stages and guarantees are described in :mod:`index_builder.build` (full builds) and
:mod:`index_builder.update` (deltas); the Redis schema in :mod:`service.store` and
``docs/redis-schema.md``; the index files in :mod:`service.vector_index`.
"""
