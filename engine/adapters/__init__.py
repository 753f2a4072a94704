"""IO adapters of the engine: Redis store, control-plane client, metrics scraping, hooks."""
