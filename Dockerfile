# syntax=docker/dockerfile:1
# One image, two roles (scale each on its own; both are stateless, the database holds the state):
#   docker run -p 50051:50051 --env-file jobsvc.env jobsvc rpc       # gRPC JobService + relay
#   docker run -p 8000:8000  --env-file jobsvc.env \
#     --health-cmd "jobsvc health --http http://127.0.0.1:8000/readyz" jobsvc sidecar
# Run `jobsvc migrate` once per release before starting them (same image, same env file).
# jobsvc.env: JOBSVC_DATABASE_URL=postgresql://…, JOBSVC_BROKER=qstash, QSTASH_TOKEN,
# QSTASH_CURRENT_SIGNING_KEY, QSTASH_NEXT_SIGNING_KEY, JOBSVC_PUBLIC_URL=https://<sidecar host>,
# and for the sidecar's handlers the systems they reach (JOBSVC_LISTING_SERVICE_URL,
# JOBSVC_APPLICATION_SERVICE_URL, JOBSVC_CRM_URL, JOBSVC_PLATFORM_<NAME>_URL, JOBSVC_SMTP_*,
# JOBSVC_SMS_GATEWAY_URL; see the README). One left out is played by a development adapter that
# writes to /data/jobsvc-outbox.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY jobsvc ./jobsvc
COPY migrations ./migrations
RUN python -m venv /opt/jobsvc \
    && /opt/jobsvc/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/jobsvc/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /data --create-home jobsvc
COPY --from=build /opt/jobsvc /opt/jobsvc
ENV PATH=/opt/jobsvc/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    JOBSVC_GRPC_HOST=0.0.0.0 \
    JOBSVC_SIDECAR_HOST=0.0.0.0
USER jobsvc
WORKDIR /data
EXPOSE 50051 8000
# The gRPC health service of the server these settings configure (its port, TLS from
# JOBSVC_TLS_*; see the README); the sidecar role overrides it with its readiness URL (see above).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s \
    CMD ["jobsvc", "health"]
ENTRYPOINT ["jobsvc"]
CMD ["rpc"]
