"""Addresses, routes, messages, workers and the router."""
