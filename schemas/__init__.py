"""Avro contract (.avsc files), Confluent wire-format codec and schema-registry client."""
