"""pytest plugin entry point (``pytest11``): registers the contract kit's options and report."""
