"""Peak-quality frames: per-picture QP/POC/type from the bitstream (H.264, HEVC, VVC slice
headers), PQF detection, and a no-reference fallback estimator. See docs/pqf.md."""
