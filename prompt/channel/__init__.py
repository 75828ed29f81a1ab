"""The persistent dispatcher <-> pilot connection."""
