"""Certificates, keys and launch scripts for fedtune on real hosts (SuperLink + SuperNodes)."""
