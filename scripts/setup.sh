#!/usr/bin/env bash
# Idempotent set-up: the project venv (.venv), DVC in its own tool venv (.tools/dvc) and the
# workspace folder. A second run does nothing unless pyproject.toml or the DVC pin changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
DVC_VERSION="3.67.1"   # own venv: DVC's antlr4 pin breaks Dagster's asset selection parser
WANT_GPU="${IMAGESEARCH_GPU:-0}"
WANT_BENCH="${IMAGESEARCH_BENCH:-0}"   # `make bench`: the autofaiss peer venv
AUTOFAISS_PINS="autofaiss==2.18.0 faiss-cpu==1.8.0.post1 pyarrow==16.1.0"  # own venv: numpy<2; newer faiss breaks its OPQ call

"$PYTHON" - <<'PY' || { echo "imagesearch needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
import sys; sys.exit(sys.version_info[:2] != (3, 11))
PY

# This machine's pip config names local mirrors that may be absent; their warnings are noise.
pip_install() { "$@" 2>&1 | { grep -v "^WARNING: Location '.*is ignored" || true; }; }
stamp_of() { cat "$@" | sha256sum | cut -c1-16; }

# --- project venv -----------------------------------------------------------------------------
project_stamp="$(stamp_of pyproject.toml)-gpu${WANT_GPU}"
if [[ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$project_stamp" ]]; then
  echo "==> installing the project venv (.venv); torch alone is several GB, first time takes minutes"
  start=$(date +%s)
  [[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
  pip_install .venv/bin/python -m pip install --quiet -e '.[dev]'
  if [[ "$WANT_GPU" == "1" ]]; then
    # faiss-gpu / faiss-cpu and onnxruntime-gpu / onnxruntime each provide one module: keep the GPU
    # builds. Uninstalling a CPU build deletes the files the two share, so the GPU ones go in again.
    pip_install .venv/bin/python -m pip install --quiet -e '.[dev,gpu]'
    .venv/bin/python -m pip uninstall --quiet -y faiss-cpu onnxruntime
    gpu_pins=$(.venv/bin/python -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['gpu']))")
    # shellcheck disable=SC2086 (one word per pin)
    pip_install .venv/bin/python -m pip install --quiet --force-reinstall --no-deps $gpu_pins
  fi
  echo "$project_stamp" > .venv/.setup-stamp
  echo "    done in $(( $(date +%s) - start ))s, $(du -sh .venv | cut -f1) on disk"
else
  echo "==> project venv up to date (.venv)"
fi

# --- DVC tool venv ----------------------------------------------------------------------------
if [[ "$(cat .tools/dvc/.setup-stamp 2>/dev/null)" != "$DVC_VERSION" ]]; then
  echo "==> installing DVC $DVC_VERSION in its own venv (.tools/dvc)"
  start=$(date +%s)
  [[ -x .tools/dvc/bin/python ]] || "$PYTHON" -m venv .tools/dvc
  pip_install .tools/dvc/bin/python -m pip install --quiet "dvc==$DVC_VERSION"
  echo "$DVC_VERSION" > .tools/dvc/.setup-stamp
  echo "    done in $(( $(date +%s) - start ))s, $(du -sh .tools/dvc | cut -f1) on disk"
else
  echo "==> DVC up to date (.tools/dvc)"
fi

# --- benchmark-only peer venv -------------------------------------------------------------------
if [[ "$WANT_BENCH" == "1" && "$(cat .tools/autofaiss/.setup-stamp 2>/dev/null)" != "$AUTOFAISS_PINS" ]]; then
  echo "==> installing the benchmark peer ($AUTOFAISS_PINS) in .tools/autofaiss"
  [[ -x .tools/autofaiss/bin/python ]] || "$PYTHON" -m venv .tools/autofaiss
  # shellcheck disable=SC2086
  pip_install .tools/autofaiss/bin/python -m pip install --quiet $AUTOFAISS_PINS
  echo "$AUTOFAISS_PINS" > .tools/autofaiss/.setup-stamp
fi

# --- test peer: clip-retrieval's own client, to check /knn-service against it unchanged --------
# Only its wheel (no dependencies): the test loads clip_client.py from it; the package's __init__ would
# pull in its whole server stack.
CLIP_RETRIEVAL_WHEEL=".tools/wheels/clip_retrieval-2.45.0-py3-none-any.whl"
if [[ ! -f "$CLIP_RETRIEVAL_WHEEL" ]]; then
  echo "==> downloading clip-retrieval 2.45.0 (its ClipClient is a test peer) into .tools/wheels"
  pip_install .venv/bin/python -m pip download --quiet --no-deps "clip-retrieval==2.45.0" -d .tools/wheels
fi

# --- Debian packages: headless Chromium + ChromeDriver for the search page's browser test --------
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "==> installing Debian's chromium and chromium-driver (the web page test drives them)"
  SUDO=""; [[ "$(id -u)" == "0" ]] || SUDO="sudo -n"
  if command -v apt-get >/dev/null && $SUDO true 2>/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "    cannot install them here (needs apt-get as root or passwordless sudo); the browser test will fail" >&2
  fi
fi

# --- workspace --------------------------------------------------------------------------------
.venv/bin/imagesearch init
