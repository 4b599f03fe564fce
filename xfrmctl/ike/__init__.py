"""Sans-I/O IKEv2 (RFC 7296) protocol core.

Nothing in this package touches sockets, clocks, the kernel, the database or the API:
it is driven with bytes and `now`, and read back as bytes, timers and events.
"""
