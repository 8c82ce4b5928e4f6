"""``python -m machinery``: the same as the ``machinery`` command."""

from .cli import main

if __name__ == "__main__":
    main()
