"""NAT traversal: the reflexive-address service now; hole punching and path upgrade next."""
