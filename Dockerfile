# The decision service image (nba serve) for the production profile (NBA_PROFILE=production:
# Redis online store, Feast SQL registry on PostgreSQL, MLflow tracking server). Build from the
# project root:
#   docker build -t nba-service .
# Run it with the addresses of the shared parts (the defaults point at 127.0.0.1, which inside
# a container is the container itself) and a worker per CPU the container may use:
#   docker run -p 3000:3000 -e NBA_API_KEYS=... -e NBA_SERVE_WORKERS=2 \
#     -e NBA_REDIS_URL=redis.internal:6379 \
#     -e NBA_REGISTRY_URL=postgresql+psycopg2://nba@pg.internal:5432/nba_registry \
#     -e NBA_MLFLOW_TRACKING_URI=http://mlflow.internal:5000 nba-service
# At start-up `nba serve` exports the registry's champion once and every worker serves it; to
# pin a version instead, mount an exported model and set NBA_MODEL_PATH. The image's workspace
# (NBA_HOME, made by `nba init`) holds the feature repo's declarations, the rule files and the
# local logs; mount your own workspace there to ship edited rules. The registry and the
# features themselves live in PostgreSQL and Redis. tests/integration/test_dockerfile.py lints this file (hadolint and the project's own
# rules) and replays its COPY and pip steps in a fresh virtual environment.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_WAIT_POLICY=PASSIVE \
    BENTOML_DO_NOT_TRACK=True \
    FEAST_USAGE=False \
    MLFLOW_DISABLE_TELEMETRY=true \
    NBA_PROFILE=production \
    NBA_HOME=/srv/data

# libgomp: LightGBM's OpenMP runtime (not in the slim base). Debian package versions are not
# pinned (DL3008, .hadolint.yaml): the base tag pins the Debian release, and an exact version
# disappears from the mirror at the next point release and breaks the build.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/nba
COPY pyproject.toml README.md requirements.lock ./
COPY nba ./nba
COPY features ./features
COPY memory ./memory
COPY training ./training
COPY serving ./serving
COPY monitoring ./monitoring
COPY feature_repo ./feature_repo
# The production extra: the PostgreSQL driver of the SQL registry and the tracking store. Every
# version comes from the project's lock (requirements.lock, tools/lock.py), the same file the
# tests' environment is installed from: first the installer's own tools, then the project,
# built without isolation so that no unpinned setuptools is fetched for the build.
# hadolint ignore=DL3013
RUN pip install --constraint requirements.lock pip setuptools wheel \
    && pip install --constraint requirements.lock --no-build-isolation ".[production]" \
    && nba init /srv/data \
    && useradd --create-home --uid 10001 nba \
    && chown -R 10001 /srv/data

USER 10001
EXPOSE 3000
# Python rather than curl: one package less in the image.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/healthz', timeout=2)"]
CMD ["nba", "serve", "--host", "0.0.0.0", "--port", "3000"]
