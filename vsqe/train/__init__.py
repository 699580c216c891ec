"""Training vsqe's own weights on the CPU (`vsqe train`), and its validation and export."""
