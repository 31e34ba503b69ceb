"""smpp-bridge: signed HTTP to SMPP gateway."""

__version__ = "0.1.0"
