"""qmtl-seamless: always-ready, reproducible, rate-limit-safe crypto OHLCV history."""

__all__ = ["__version__"]

__version__ = "0.1.0"
