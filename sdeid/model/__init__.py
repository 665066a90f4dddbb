"""The SDEI dispatcher model: pure, deterministic, no I/O."""
