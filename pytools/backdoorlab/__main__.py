"""``python -m backdoorlab`` is the same as the ``backdoorlab`` command."""

from backdoorlab.cli import main

raise SystemExit(main())
