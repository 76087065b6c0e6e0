"""LifeAlign: lifelong preference alignment with FPO and SLMC."""

__version__ = "0.1.0"
