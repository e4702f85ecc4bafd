"""Create or update the local stack's SCRAM-SHA-512 user over PLAINTEXT (run by stack.sh).

    SETTLE_KAFKA_SASL_LOCAL_PASSWORD=... python deploy/kafka/scram_user.py \
        --bootstrap 127.0.0.1:19092 --user settle-client

The password comes from the environment only (never argv, so `ps` cannot show it) and is never
printed. Upserting the credential is idempotent: a second run leaves the same user behind.
"""

from __future__ import annotations

import argparse
import os
import sys

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

ITERATIONS = 8192  # the SCRAM iteration count Kafka's own tools default to (minimum 4096)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="a PLAINTEXT listener, host:port")
    parser.add_argument("--user", required=True, help="the SCRAM user name")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    args = parser.parse_args(argv)
    password = os.environ.get("SETTLE_KAFKA_SASL_LOCAL_PASSWORD", "")
    if not password:
        print("SETTLE_KAFKA_SASL_LOCAL_PASSWORD is empty", file=sys.stderr)
        return 2
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, ITERATIONS)
    upsert = UserScramCredentialUpsertion(args.user, info, password.encode())
    try:
        futures = admin.alter_user_scram_credentials([upsert], request_timeout=args.timeout)
        futures[args.user].result(timeout=args.timeout)
    except KafkaException as exc:
        print(f"cannot set SCRAM credentials of {args.user}: {exc}", file=sys.stderr)
        return 1
    print(f"SCRAM-SHA-512 user {args.user} is set (password from the environment)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
