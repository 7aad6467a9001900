"""The webhook receiver: a Starlette app for Evolution's deliveries and health checks."""

from evochips.receiver.app import create_app

__all__ = ["create_app"]
