"""Shared code for the FedHE services: crypto foundation, ML bridge, config and RPC helpers."""
