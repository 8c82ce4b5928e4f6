"""Built-in brokers: memory:// and sqlite://."""
