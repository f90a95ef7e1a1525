#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (and prints its path) from the llama-cpp-python source
# distribution on the package index, which vendors llama.cpp. No network beyond the package index;
# needs cmake, ninja or make, and a C++ compiler. About 15 minutes on 2 cores, once.
#   LLAMA_SERVER=$(tools/build-llama-server.sh) python -m pytest -m slow
# The slow tests run it themselves when no llama-server is found (tests/conftest.py, `llama_server`).
# The server speaks the OpenAI API and, at POST /v1/messages, the Anthropic Messages API
# (tool use with --jinja). Useful flags: -m FILE.gguf --port N --host 127.0.0.1 -c 8192 -t 2 --jinja
set -eu
# GGML_NATIVE builds for this CPU: key the build by the CPU's flags, so another CPU rebuilds.
cpu=$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m) | cksum | cut -d' ' -f1)
out=${LLAMA_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llama-server-build-$cpu}
bin=$out/build/bin/llama-server
if [ ! -x "$bin" ]; then
  mkdir -p "$out"
  python3 -m pip download -q --no-deps --no-binary :all: -d "$out" "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION:-0.3.36}" >&2
  tar xzf "$out"/llama_cpp_python-*.tar.gz -C "$out" >&2
  src=$(ls -d "$out"/llama_cpp_python-*/vendor/llama.cpp | head -1)
  gen=$(command -v ninja >/dev/null && echo Ninja || echo "Unix Makefiles")
  cmake -S "$src" -B "$out/build" -G "$gen" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
  cmake --build "$out/build" --target llama-server -j"$(nproc)" >&2
fi
echo "$bin"
