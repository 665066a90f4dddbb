"""Tools for testing sdeid without QEMU: a front-end peer with simulated vCPUs."""
