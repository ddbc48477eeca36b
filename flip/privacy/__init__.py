"""Privacy that is declared in one config option, enforced on both sides and accounted."""
