"""Services: the backfill coordinator and the exchange simulator."""
