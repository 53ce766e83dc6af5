"""Benchmarks and hardware checks of the service (`make bench`, `make gpu-check`)."""
