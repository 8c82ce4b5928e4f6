"""The built-in transports, laid out like the plugins: ``memory://`` and ``sqlite://``."""
