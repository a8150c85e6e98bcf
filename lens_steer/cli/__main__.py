"""``python -m lens_steer.cli``."""

from lens_steer.cli import main

raise SystemExit(main())
