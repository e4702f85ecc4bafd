"""Avro contract (.avsc), Confluent wire-format codec and schema-registry client of the pipeline."""

# Modules: contract (load .avsc, schema_for, schema_str_for), topics (TOPIC_RECORDS, subjects),
# codec (AvroSerializer, AvroDeserializer, epoch helpers), registry (RegistryClient,
# InMemoryRegistry, register_all), errors (SchemaError tree), checks (strict pre-encode checks).
# Nothing is imported here, so importing one module does not pull in httpx or fastavro for all.
