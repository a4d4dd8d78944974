"""The web layer (FastAPI): app factory, routes, schemas, errors, metrics.  Import
``service.api.app.create_app``; the core (:mod:`service`) does not import this package."""
