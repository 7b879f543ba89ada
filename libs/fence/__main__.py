"""``python -m fence``: same as the ``fence`` console script."""

from fence.cli import main

raise SystemExit(main())
