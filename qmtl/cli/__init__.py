"""The ``qmtl-seamless`` command line."""
