"""How processes of a cluster talk: authenticated frames over ZeroMQ.

- :mod:`.frames`: the wire format; authenticating a frame before anything is decoded.
- :mod:`.addresses`: parsing ``host:port`` lists and choosing what to bind.
- :mod:`.link`: the sockets and threads that connect one process to all the others.
- :mod:`.protocols`: what a link needs from the runtime's exchange; the transport imports
  nothing of the runtime.
- :mod:`.counters`: what a link counts (bytes per peer, refused frames by cause) for metrics.
"""
