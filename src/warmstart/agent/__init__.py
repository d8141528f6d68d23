"""The node agent: one per node (a Kubernetes DaemonSet), owning the node's cache home.

``config`` reads the YAML it is given, ``server`` serves the HTTP API on a unix socket (and
optionally TCP), ``metrics`` holds its Prometheus metrics, ``client`` is what pulls delegate through.
The server calls only the public API (``warmstart.api``). Importing this package imports nothing:
the server's libraries (the ``[agent]`` extra) load only in ``warmstart agent``.
"""
