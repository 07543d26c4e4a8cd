"""Test support shipped with the package: throwaway real servers for tests and benchmarks."""
