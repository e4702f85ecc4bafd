"""The read-only HTTP API over the books the sinks write (`settle api serve`).

An adapter like the sinks: it reads PostgreSQL through its own async pool, as a login that is
a member of settle_api_reader, so row-level security limits a merchant key to its merchant's
rows beside the merchant filter every query carries.
"""
