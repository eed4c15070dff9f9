"""The client: calls to midgram, OpenSIPS and Kamailio over datagrams (``calls``), its
JSON-RPC codec (``codec``) and the load test behind ``midgram bench`` (``loadtest``).
"""

from midgram.client.calls import AsyncClient, Client, Exchange

__all__ = ["AsyncClient", "Client", "Exchange"]
