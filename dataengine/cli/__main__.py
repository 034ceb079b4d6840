"""``python -m dataengine.cli`` (and ``torchrun -m dataengine.cli train ...``)."""

from dataengine.cli.main import main

main()
