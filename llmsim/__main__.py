"""``python -m llmsim ...`` runs the command line (the same as the ``llmsim`` script)."""

from llmsim.cli import main

main()
