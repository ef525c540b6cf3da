"""Transports: TCP (TLS 1.3) now, UDP (QUIC on one socket) next; the hop protocol they share."""
