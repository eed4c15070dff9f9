"""The engine: the whole MI server minus sockets (commands, dispatch, statistics, the
built-in commands, trace packets). It does no socket I/O.
"""
