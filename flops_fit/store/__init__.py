"""The store: run records (a leaf the analysis reads without the training side), leases and
the content-addressed store of experiments."""
