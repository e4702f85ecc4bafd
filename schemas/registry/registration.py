"""Registering the contract's schemas, and removing an isolated run's subjects."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from schemas.contract import schema_str_for
from schemas.errors import SubjectNotFound
from schemas.registry.client import RegistryClient
from schemas.registry.protocol import SchemaRegistry, check_level
from schemas.topics import TOPIC_RECORDS, value_subject

log = logging.getLogger(__name__)


def delete_subjects_with_prefix(client: RegistryClient, prefix: str) -> int:
    """Delete every subject whose name starts with `prefix`; return how many went.

    An isolated run's topics are `prefix` + the contract's names, and so are its subjects.
    """
    if not prefix:
        raise ValueError("an empty prefix would delete every subject")
    return sum(client.delete_subject(s) for s in client.subjects() if s.startswith(prefix))


def register_all(
    client: SchemaRegistry,
    topics: Mapping[str, str] = TOPIC_RECORDS,
    compatibility: str = "BACKWARD",
) -> dict[str, int]:
    """Register each topic's schema under `<topic>-value` with a compatibility level; idempotent."""
    # The level is set before registering, so a changed schema is checked against it. Confluent
    # and Apicurio 3.3 accept PUT /config for a subject that does not exist yet; older Apicurio
    # answers 404, so then the first version is registered (nothing to be incompatible with)
    # and the level set right after.
    check_level(compatibility)
    ids: dict[str, int] = {}
    for topic, record_name in topics.items():
        subject = value_subject(topic)
        schema_str = schema_str_for(record_name)
        try:
            client.set_compatibility(subject, compatibility)
        except SubjectNotFound:
            ids[subject] = client.register(subject, schema_str)
            client.set_compatibility(subject, compatibility)
        else:
            ids[subject] = client.register(subject, schema_str)
        log.info("registered %s (%s) as schema id %d", subject, record_name, ids[subject])
    return ids
