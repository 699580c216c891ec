"""`vsqe train [run|export]`: CPU training of vsqe's own weights (implemented in vsqe.train.cli)."""
from vsqe.train.cli import add_train_parser as register  # noqa: F401
