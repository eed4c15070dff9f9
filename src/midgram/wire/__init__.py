"""Sans-IO codecs: bytes and values in, bytes and values out (no sockets, no clock).

- ``jsonrpc``: the server side of MI JSON-RPC as OpenSIPS speaks it;
- ``address``: the address grammars (``socket_name``, targets, ``hep_id``);
- ``hep``: HEP3 packets.
"""
