"""Integration tier: real Docker engine, real HTTP servers on loopback."""
