"""`python -m vsqe` is the `vsqe` command."""
from vsqe.cli import exit_process, main

exit_process(main())
