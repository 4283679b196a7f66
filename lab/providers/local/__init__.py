"""The local provider: network namespaces and supervised processes on this machine."""
