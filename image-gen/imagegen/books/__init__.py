"""The books: what the service must remember and share between processes, behind interfaces.

    interfaces.py   the contracts: CapsBook, IdempotencyBook, JobBook (with its leases)
    caps.py         the caps' rules every CapsBook applies alike (windows, room, amounts)
    keys.py         the idempotency keys' rules every IdempotencyBook applies alike
    sqlite.py       the caps ledger and the idempotency keys in one SQLite file (the first
                    implementation: `<images>/.ledger/ledger.sqlite3`)
    postgres.py     the caps ledger and the idempotency keys in PostgreSQL (replicas on
                    several hosts: IMAGE_GEN_DATABASE_URL)
    postgres_jobs.py  the asynchronous jobs in PostgreSQL, with timed leases and slots
    migrations.py   the PostgreSQL schema as numbered migrations, applied under a lock
    files.py        the asynchronous jobs as files with flock leases (`<images>/.jobs`)
    open.py         `open_books`: which implementations a service runs with, in one place

Every implementation passes the same contract tests (tests/contract/); callers only see the
interfaces. The image index stays with the image store (storage/), for now.
"""
