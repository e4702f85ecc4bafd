"""Benchmarks on the real stack (`settle bench ...`): limits, stages, COPY, peer, latency."""
