"""The HTTP contract from the outside: the Python client and the ``troupe`` CLI.

Importing this package loads neither the service nor the server.
"""

from actors.client.client import TroupeClient, TroupeConnectionError, TroupeError

__all__ = ["TroupeClient", "TroupeConnectionError", "TroupeError"]
