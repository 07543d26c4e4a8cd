"""Runtime packages: ``sdk`` (pure core and engine) and ``io`` (exchange, storage, stores)."""
