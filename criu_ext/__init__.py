"""CRIU integration: hook entry, phase dispatch, plugins, image I/O, RPC driver."""
