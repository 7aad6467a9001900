"""The HTTP API under ``/api/v1``: commands, chips and the audit trail
(``evochips.api.routes``)."""
