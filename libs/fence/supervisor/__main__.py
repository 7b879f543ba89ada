"""``python -m fence.supervisor up|status|down``: what ``fence up --detach`` starts in the background."""

from fence.supervisor.commands import main

raise SystemExit(main())
