"""The example configs, as package data (``-cp pkg://nequip_spectral.example_configs``)."""
