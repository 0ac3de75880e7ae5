"""Developer tooling kept out of the product's core: the benchmark and registration-accuracy helpers."""
