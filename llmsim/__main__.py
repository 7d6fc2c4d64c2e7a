"""``python -m llmsim ...`` runs the command line (the same as the ``llmsim`` script)."""

import sys

try:
    from llmsim.cli import main
except KeyboardInterrupt:  # Ctrl-C while starting, before main() installs its handler
    sys.stderr.write("llmsim: interrupted\n")
    sys.exit(130)

main()
