"""Finding and decoding input images."""
