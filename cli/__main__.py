"""``python -m cli`` runs the ``dataengine`` command line."""

from cli.main import main

main()
