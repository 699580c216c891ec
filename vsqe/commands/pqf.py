"""`vsqe pqf`: per-frame QP/POC/type and peak-quality frames (implemented in vsqe.pqf.cli)."""
from vsqe.pqf.cli import register  # noqa: F401
