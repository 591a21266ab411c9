"""``python -m casfs`` runs the command line."""

from casfs.cli import main

raise SystemExit(main())
