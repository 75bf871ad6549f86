"""``python -m reconciler.cli``: the ``modelplane`` command."""

from .main import main

main()
