"""Built-in backends: memory:// and sqlite://."""
