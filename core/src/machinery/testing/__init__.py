"""The contract kit for transport plugins (see core/README.md, "Write a plugin")."""
