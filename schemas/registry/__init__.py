"""Schema-registry client (Confluent-compatible REST), an in-memory fake, and registration.

Modules: protocol (what the codec needs of a registry, compatibility levels), client
(RegistryClient), fake (InMemoryRegistry, for unit tests), registration (register_all,
delete_subjects_with_prefix).
"""

from schemas.registry.client import RegistryClient
from schemas.registry.fake import InMemoryRegistry
from schemas.registry.protocol import COMPATIBILITY_LEVELS, SchemaLookup, SchemaRegistry
from schemas.registry.registration import delete_subjects_with_prefix, register_all

__all__ = [
    "COMPATIBILITY_LEVELS",
    "InMemoryRegistry",
    "RegistryClient",
    "SchemaLookup",
    "SchemaRegistry",
    "delete_subjects_with_prefix",
    "register_all",
]
