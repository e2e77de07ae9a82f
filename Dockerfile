# syntax=docker/dockerfile:1
# Build: docker build -t jobsvc .
# Run the local QStash-compatible server with its state on a volume:
#   docker run -p 8080:8080 -v jobsvc-data:/data jobsvc

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY jobsvc ./jobsvc
RUN python -m venv /opt/jobsvc \
    && /opt/jobsvc/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/jobsvc/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /data --create-home jobsvc
COPY --from=build /opt/jobsvc /opt/jobsvc
ENV PATH=/opt/jobsvc/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    JOBSVC_QSTASH_DEV_HOST=0.0.0.0 \
    JOBSVC_QSTASH_DEV_DATABASE_URL=sqlite:////data/jobsvc-qstash.sqlite3
USER jobsvc
WORKDIR /data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/health', timeout=2)"
ENTRYPOINT ["jobsvc"]
CMD ["qstash-dev"]
