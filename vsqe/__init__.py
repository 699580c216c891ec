"""vsqe: learned quality enhancement for decoded video."""

__version__ = "0.1.0"
