"""Decoding, encoding, raw files and pixel formats."""
