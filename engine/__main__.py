"""`python -m engine` does what the `ringback` console script does."""

from engine.cli.main import main

raise SystemExit(main())
