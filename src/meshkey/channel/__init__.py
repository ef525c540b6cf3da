"""Secure channels (Noise XX, identities attested), and the trust policies that use them."""
