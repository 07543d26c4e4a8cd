"""Edges: ccxt, storage backends, artifact stores."""
