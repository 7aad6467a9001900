"""evochips: one service that owns the lifecycle of WhatsApp numbers on Evolution API."""

__version__ = "0.1.0"
