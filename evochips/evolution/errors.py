"""Everything that can go wrong with a call to Evolution API.

    EvolutionError
    ├── EvolutionUnavailable        no usable answer: refused connection, DNS, timeout
    │   └── EvolutionTimeout
    ├── EvolutionRejected           an HTTP error status with Evolution's error envelope
    │   ├── EvolutionUnauthorized   401: the API key is wrong
    │   ├── InstanceNotFound        404: the instance does not exist there
    │   └── InstanceNameInUse       403 on create
    └── EvolutionProtocolError      an answer we cannot trust: not JSON, empty, an error
                                    hidden in HTTP 200, or a shape we do not know

The client raises only these, translated from httpx in one place
(``EvolutionClient._request``). ``retryable`` tells a caller whether the same call may
succeed later without anything changing on our side.
"""

from __future__ import annotations


class EvolutionError(Exception):
    retryable = False

    def __init__(self, message: str, *, method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.method = method
        self.path = path


class EvolutionUnavailable(EvolutionError):
    retryable = True


class EvolutionTimeout(EvolutionUnavailable):
    pass


class EvolutionRejected(EvolutionError):
    def __init__(
        self,
        message: str,
        *,
        status: int,
        reason: str = "",
        detail: str = "",
        method: str = "",
        path: str = "",
    ) -> None:
        super().__init__(message, method=method, path=path)
        self.status = status
        self.reason = reason
        # Evolution's own words (its envelope's ``message``), to match on safely: the full
        # message also holds the path, and so the instance name.
        self.detail = detail
        self.retryable = status >= 500 or status in (408, 429)


class EvolutionUnauthorized(EvolutionRejected):
    pass


class InstanceNotFound(EvolutionRejected):
    pass


class InstanceNameInUse(EvolutionRejected):
    pass


class EvolutionProtocolError(EvolutionError):
    pass
