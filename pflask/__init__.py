"""pflask: Linux namespace containers from flags or checked-in manifests."""

__version__ = "0.1.0"
