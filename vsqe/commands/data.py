"""`vsqe data fetch-debian | build | manifest`: training material (implemented in vsqe.train.cli)."""
from vsqe.train.cli import add_data_parser as register  # noqa: F401
