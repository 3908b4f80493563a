#!/usr/bin/env bash
# Install upstream vLLM into the active virtual environment, as a kvspec target.
#
# Usage: scripts/install-vllm-target.sh [VERSION]   (0.33.0, the default, or 0.22.1)
# 0.33.0 is the reference of the `current` profile; 0.22.1 is the release whose hybrid
# coordinator kvspec's hybrid level catches handing one block to two groups
# (docs/upstream-divergences.md). One venv holds one version.
#
# Why not `pip install vllm`: its requirements pull a multi-gigabyte CUDA stack (flashinfer,
# cutlass, nvidia-* wheels, torch 2.14). kvspec drives only vllm.v1.core (BlockPool,
# KVCacheManager, FreeKVCacheBlockQueue), which is pure Python on top of torch. So vllm is
# installed with --no-deps, next to the pure-Python packages that importing
#   vllm.v1.core.block_pool, vllm.v1.core.kv_cache_manager, vllm.v1.core.kv_cache_utils
# actually needs, each pinned inside vllm 0.33.0's own requirement ranges. No CUDA library
# and no compiled vllm extension is loaded.
#
# Assumes: the active venv has kvspec installed, and torch 2.13.0 (CPU build) installed or
# installable. Idempotent: a second run finds everything satisfied and only re-checks.
#
# Cache: wheels are kept in $KVSPEC_VLLM_WHEELS
# (default ${XDG_CACHE_HOME:-$HOME/.cache}/kvspec/vllm-0.33.0-wheels, about 400 MB, most of it
# the vllm wheel). Later runs, and CI runs on the same machine, install from there without
# touching the package index. Delete the folder to force a fresh download.
#
# Expected: `pip check` then lists many missing vllm requirements (anthropic, flashinfer-python,
# numba, ...) and "torch==2.14.0, but you have torch 2.13.0+cpu". They are deliberately
# absent: nothing under vllm.v1.core imports them.
set -euo pipefail

VLLM_VERSION="${1:-0.33.0}"
case "$VLLM_VERSION" in
  0.33.0|0.22.1) ;;
  *) echo "install-vllm-target: version $VLLM_VERSION is not supported; expected 0.33.0 or 0.22.1" >&2
     exit 2 ;;
esac
WHEELS="${KVSPEC_VLLM_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/kvspec/vllm-${VLLM_VERSION}-wheels}"

# Exact pins, all inside vllm 0.33.0's Requires-Dist ranges where it names the package
# (packages it does not name are the import-time dependencies of those it does).
# 0.22.1 declares torch==2.11.0, but vllm.v1.core imports and runs on torch 2.13.0 CPU; its
# other ranges admit the same pins (transformers>=4.56.0 but not 5.0-5.5.0, xgrammar<1.0,
# llguidance<1.8, openai>=2.0, aiohttp>=3.13.3), plus gguf>=0.17.0, which it imports at
# start-up. oss-harmony provides the openai_harmony module that it names openai-harmony.
PINS=(
  "vllm==${VLLM_VERSION}"
  "xgrammar==0.2.8"             # vllm: ==0.2.8
  "apache-tvm-ffi==0.1.11"      # vllm: ==0.1.11 (imported by xgrammar)
  "llguidance==1.7.6"           # vllm: >=1.7.0,<1.8.0
  "oss-harmony==0.0.11"         # vllm: >=0.0.11 (provides the openai_harmony module)
  "transformers==5.20.2"        # vllm: >=5.16.1,<5.21.0
  "huggingface_hub==2.4.0"      # vllm: >=1.31.0
  "tokenizers==0.23.3"          # vllm: >=0.23.2
  "safetensors==0.8.0"          # vllm: >=0.6.2 (transformers: >=0.8.0)
  "fastapi==0.136.3"            # vllm: fastapi[standard]>=0.133.0,<0.137.0
  "starlette==1.10.0"           # vllm: >=1.0.1
  "annotated-doc==0.0.7"
  "openai==3.57.0"              # vllm: >=2.25.0
  "pydantic==2.14.4"            # vllm: >=2.12.0
  "pydantic_core==2.50.5"
  "typing-inspection==0.4.5"
  "annotated-types==0.8.0"
  "aiohttp==3.14.5"             # vllm: >=3.14.4
  "multidict==7.2.1"            # vllm: >=6.9.1
  "aiohappyeyeballs==2.7.1"
  "aiosignal==1.4.0"
  "frozenlist==1.8.0"
  "attrs==26.1.0"
  "yarl==1.25.1"
  "propcache==0.5.4"
  "requests==2.34.2"            # vllm: >=2.33.0
  "certifi==2026.10.19.post1"   # vllm: >=2026.10.19
  "charset-normalizer==3.5.3"
  "urllib3==2.8.0"
  "idna==3.20"
  "httpx2==2.16.2"
  "httpcore2==2.16.2"
  "h11==0.16.0"
  "truststore==0.10.5"
  "anyio==4.16.0"
  "sniffio==1.3.1"
  "pillow==13.0.0"              # vllm: >=13.0.0
  "prometheus_client==0.26.0"   # vllm: >=0.18.0
  "pyzmq==27.3.0"               # vllm: >=25.0.0
  "numpy==2.4.6"
  "regex==2026.11.19"
  "msgspec==0.22.0"
  "cbor2==6.3.0"
  "psutil==7.2.2"
  "packaging==26.4"
  "pyyaml==6.0.4"
  "tqdm==4.70.1"
  "pybase64==1.5.1"
  "cachetools==8.0.2"
  "cloudpickle==3.1.3"
  "uvloop==0.23.0"
  "py-cpuinfo==9.0.0"
  "partial-json-parser==0.2.1.1.post7"
)
if [ "$VLLM_VERSION" = "0.22.1" ]; then
  PINS+=("gguf==0.17.1")
fi

python=python
if ! "$python" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
  echo "install-vllm-target: activate the virtual environment that has kvspec first" >&2
  exit 1
fi

# torch: must be 2.13.0 and a CPU build. PyPI's default torch build would bring CUDA wheels.
if ! "$python" -c 'import torch' 2>/dev/null; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  pip download --no-deps --dest "$tmp" "torch==2.13.0"
  wheel=$(ls "$tmp"/torch-*.whl)
  case "$wheel" in
    *+cpu*) pip install "$wheel" ;;
    *) echo "install-vllm-target: the torch wheel found is not a CPU build ($wheel);" \
            "install torch 2.13.0 CPU first" >&2
       exit 1 ;;
  esac
fi
"$python" - <<'PY'
import sys
import torch
if not torch.__version__.startswith("2.13.0") or torch.version.cuda is not None:
    sys.exit(f"install-vllm-target: need torch 2.13.0 CPU, found {torch.__version__} "
             f"(cuda {torch.version.cuda})")
PY

# Every package with --no-deps: the pins above are the whole closure that is needed.
mkdir -p "$WHEELS"
if ! pip install --no-deps --no-index --find-links "$WHEELS" "${PINS[@]}" 2>/dev/null; then
  pip download --no-deps --only-binary :all: --dest "$WHEELS" "${PINS[@]}"
  pip install --no-deps --no-index --find-links "$WHEELS" "${PINS[@]}"
fi

"$python" - <<'PY'
import vllm.v1.core.block_pool
import vllm.v1.core.kv_cache_manager
import vllm.v1.core.kv_cache_utils  # noqa: F401
import vllm

print(f"vllm {vllm.__version__} target ready (vllm.v1.core imports)")
PY
