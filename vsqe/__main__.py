"""`python -m vsqe` is the `vsqe` command."""
from vsqe.cli import main

raise SystemExit(main())
