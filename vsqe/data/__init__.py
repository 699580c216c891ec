"""Training data for vsqe: Debian source material, synthetic camera motion, real encoders."""
