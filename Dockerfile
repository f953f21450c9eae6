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
# pin a version instead, mount an exported model and set NBA_MODEL_PATH. The feature repo's
# declarations are baked in; the registry and the features themselves live in PostgreSQL and
# Redis. tests/integration/test_dockerfile.py lints this file (hadolint and the project's own
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
    NBA_FEATURE_REPO=/srv/nba/feature_repo \
    NBA_DECISION_LOG_DIR=/srv/data/logs/decisions \
    NBA_EVENTS_LOG_DIR=/srv/data/logs/events \
    NBA_PROMO_HISTORY_PATH=/srv/data/logs/promo_history.db

# libgomp: LightGBM's OpenMP runtime (not in the slim base). Debian package versions are not
# pinned (DL3008, .hadolint.yaml): the base tag pins the Debian release, and an exact version
# disappears from the mirror at the next point release and breaks the build.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/nba
COPY pyproject.toml README.md constraints.txt ./
COPY nba ./nba
COPY features ./features
COPY training ./training
COPY serving ./serving
COPY monitoring ./monitoring
COPY feature_repo ./feature_repo
# The production extra: the PostgreSQL driver of the SQL registry and the tracking store. The
# constraints are the versions the tests ran with (tools/constraints.py), not the day's latest.
RUN pip install --constraint constraints.txt ".[production]" \
    && useradd --create-home --uid 10001 nba \
    && mkdir -p /srv/data \
    && chown -R 10001 /srv/data /srv/nba/feature_repo

USER 10001
EXPOSE 3000
# Python rather than curl: one package less in the image.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/healthz', timeout=2)"]
CMD ["nba", "serve", "--host", "0.0.0.0", "--port", "3000"]
