# syntax=docker/dockerfile:1
#
# qpu-k8s images, one Dockerfile, two targets:
#   docker build -t qpu-k8s:0.1.0 .                             agents: operator, device plugin,
#                                                               DRA driver (light stack, default)
#   docker build --target emulator -t qpu-k8s:0.1.0-emulator .  + the `emulator` extra: the local
#                                                               vendor emulator, Qiskit, Pulser and
#                                                               the simulators (also the example
#                                                               pods' image)
# Entry point: the `qpu-k8s` console command; the first argument picks the agent:
#   operator | device-plugin | dra-plugin | emulator | validate | env
#
# Users: the image runs as uid/gid 65532 (non-root). The operator and the emulator keep that.
# The node agents need uid 0, set by the Helm chart, because the kubelet's socket directories
# (/var/lib/kubelet/device-plugins, plugins_registry, plugins) and /var/run/cdi are owned by
# root; they still run with every capability dropped and a read-only root filesystem.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: build our wheel, install it and its dependencies into /opt/venv --------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Pinned build tools; the build runs without isolation so nothing unpinned is fetched.
RUN python -m pip install --no-cache-dir "pip==26.3" "setuptools==84.2.1" "wheel==0.48.0"
# Every dependency is pinned by docker/constraints.txt (python -m testsupport.packaging lock).
COPY docker/constraints.txt /src/docker/constraints.txt
ENV PIP_CONSTRAINT=/src/docker/constraints.txt
# Only what the wheel needs: the one package, qpu_k8s/ (test support is not shipped).
COPY pyproject.toml README.md ./
COPY qpu_k8s/ qpu_k8s/
RUN python -m pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

# The venv has no pip of its own: the builder's pip installs into it (--python).
FROM builder AS venv-agents
RUN python -m venv --without-pip /opt/venv \
 && python -m pip --python /opt/venv/bin/python install --no-cache-dir /wheels/qpu_k8s-*.whl

FROM builder AS venv-emulator
RUN python -m venv --without-pip /opt/venv \
 && WHEEL="$(ls /wheels/qpu_k8s-*.whl)" \
 && python -m pip --python /opt/venv/bin/python install --no-cache-dir "${WHEEL}[emulator]"

# ---- runtime base: the slim Python, a non-root user, nothing to build with -----------------
FROM ${PYTHON_IMAGE} AS runtime
# pip, setuptools and wheel of the base image are not needed at run time.
RUN python -m pip uninstall -y -q pip setuptools wheel \
 && groupadd --gid 65532 qpu \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin qpu
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /tmp
ENTRYPOINT ["qpu-k8s"]
CMD ["--help"]

# ---- emulator: the agents' stack plus simulators and the vendor SDKs -----------------------
FROM runtime AS emulator
LABEL org.opencontainers.image.title="qpu-k8s-emulator" \
      org.opencontainers.image.description="qpu-k8s with the local QPU emulator, Qiskit and Pulser" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=venv-emulator /opt/venv /opt/venv
USER 65532:65532
EXPOSE 8080
CMD ["emulator", "--host=0.0.0.0", "--port=8080"]

# ---- agents (default target): operator, device plugin, DRA driver --------------------------
FROM runtime AS agents
LABEL org.opencontainers.image.title="qpu-k8s" \
      org.opencontainers.image.description="QPUs as Kubernetes resources over QRMI: operator, device plugin, DRA driver" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=venv-agents /opt/venv /opt/venv
USER 65532:65532
