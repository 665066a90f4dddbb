"""sdeid: an SDEI dispatcher for virtual machines, outside the VMM."""

__version__ = "0.1.0"
