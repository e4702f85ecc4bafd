"""Composition root: configuration, Kafka plumbing, topics and the `settle` command line."""
