# image-gen: the HTTP service that holds the OpenAI key so agents never do.
# Build: docker build -t image-gen:local .    Run: see docker-compose.yml and the README.
FROM python:3.13-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    IMAGE_GEN_IMAGES_DIR=/app/images \
    IMAGE_GEN_ALLOW_ROOT=false

# The image's own non-root user, for docker run, Swarm and Kubernetes. docker-compose.yml
# runs the service as the owner of the checkout instead (IMAGE_GEN_USER): any numeric uid
# works, with or without an entry here. The service refuses to start as root.
RUN groupadd --system --gid 10001 imagegen \
    && useradd --system --uid 10001 --gid imagegen --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin imagegen

WORKDIR /app

# Pinned dependencies first: this layer is reused while only the code changes.
# Wheels only, so nothing is ever compiled and no compiler is needed.
COPY image-gen/requirements.txt ./requirements.txt
RUN pip install --no-cache-dir --only-binary=:all: -r requirements.txt

# The code stays owned by root (read-only for the service); only images/ is writable.
COPY image-gen/ ./
RUN python -m compileall -q imagegen wsgi.py gunicorn.conf.py healthcheck.py \
    && mkdir -p images \
    && chown imagegen:imagegen images

USER 10001:10001
EXPOSE 5000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
# Exec form: Gunicorn is PID 1 and gets SIGTERM itself, so in-flight requests finish
# within GUNICORN_GRACEFUL_TIMEOUT before it exits.
CMD ["gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"]
