"""Pure core and the provider engine (no exchange or database code)."""
