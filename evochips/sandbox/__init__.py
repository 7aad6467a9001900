"""A simulator of the parts of Evolution API that evochips uses, for tests and demos.

It answers like Evolution API v2.3 (or v1.8), keeps instances in memory, and plays the
phone and the network through control routes under ``/_sandbox/``. WhatsApp itself is
simulated: no message ever leaves the machine.
"""

from evochips.sandbox.app import create_sandbox
from evochips.sandbox.config import SandboxConfig

__all__ = ["SandboxConfig", "create_sandbox"]
