# Small runtime image: slim Python, non-root user, config at /etc/smpp-bridge/bridge.yaml.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/smpp-bridge --create-home bridge \
    && mkdir -p /etc/smpp-bridge && chown bridge /etc/smpp-bridge
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/bridge.example.yaml /etc/smpp-bridge/bridge.example.yaml
USER bridge
WORKDIR /var/lib/smpp-bridge
EXPOSE 8080
ENTRYPOINT ["smpp-bridge", "run", "--config", "/etc/smpp-bridge/bridge.yaml"]
