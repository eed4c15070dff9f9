"""The client: calls to midgram, OpenSIPS and Kamailio over datagrams (``calls``; one call's
socket, id and reply checks: ``exchange``), its JSON-RPC codec (``codec``) and the load test
behind ``midgram bench`` (``loadtest``).
"""

from midgram.client.calls import AsyncClient, Client
from midgram.client.exchange import Exchange

__all__ = ["AsyncClient", "Client", "Exchange"]
