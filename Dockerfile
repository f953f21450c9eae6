# The decision service image (nba serve). Build from the project root:
#   docker build -t nba-service .
# Run with the feature repo and an exported model mounted, settings from the environment:
#   docker run -p 3000:3000 -e NBA_API_KEYS=... \
#     -v $PWD/feature_repo:/srv/nba/feature_repo -v $PWD/logs/serving-model:/srv/model:ro \
#     -e NBA_MODEL_PATH=/srv/model nba-service
# Without NBA_MODEL_PATH the service loads the registry's champion (NBA_MLFLOW_TRACKING_URI).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    OMP_WAIT_POLICY=PASSIVE \
    BENTOML_DO_NOT_TRACK=True \
    FEAST_USAGE=False \
    MLFLOW_DISABLE_TELEMETRY=true \
    NBA_FEATURE_REPO=/srv/nba/feature_repo \
    NBA_DECISION_LOG_DIR=/srv/data/logs/decisions \
    NBA_EVENTS_LOG_DIR=/srv/data/logs/events \
    NBA_PROMO_HISTORY_PATH=/srv/data/logs/promo_history.db

# libgomp: LightGBM's OpenMP runtime (not in the slim base).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/nba
COPY pyproject.toml README.md ./
COPY nba ./nba
COPY features ./features
COPY training ./training
COPY serving ./serving
COPY monitoring ./monitoring
COPY feature_repo ./feature_repo
RUN pip install . && useradd --create-home --uid 10001 nba \
    && mkdir -p /srv/data && chown -R nba /srv/data /srv/nba/feature_repo

USER nba
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:3000/healthz || exit 1
CMD ["nba", "serve", "--host", "0.0.0.0", "--port", "3000"]
