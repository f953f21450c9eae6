"""nba: next-best-action for travel brands. The command line lives in ``nba.cli``."""

__version__ = "0.1.0"
