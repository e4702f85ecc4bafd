"""Entry points and operations tooling: the `settle` command line, demo, audits, monitor,
benchmarks, fault injection. Nothing below this layer imports it."""
