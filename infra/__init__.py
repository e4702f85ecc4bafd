"""Infrastructure: typed settings, Kafka clients and admin, keyring, GC tuning."""
