"""Built-in locks: memory:// and sqlite://."""
