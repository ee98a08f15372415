#!/usr/bin/env bash
# Create the TRL peer environments used by benchmarks/compare.py (TRL is never an rlft dependency).
#
#   bash benchmarks/setup_peers.sh            # both peers
#   bash benchmarks/setup_peers.sh trl-latest # one of them
#
# benchmarks/.venvs/trl-0.11.4: the last TRL with PPOTrainer.generate/step, on the transformers it
#   was released against (4.46.x).
# benchmarks/.venvs/trl-latest: the newest TRL (SFT, reward, DPO), on the same transformers as rlft's
#   venv so that both sides run identical model code.
# torch==2.13.0 (the CPU build, as in rlft's venv) is installed first so that no peer drags in a
# multi-GB CUDA build; both sides then run the same torch kernels.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
rlft_tf="$("$here/../.venv/bin/python" -c 'import transformers; print(transformers.__version__)' 2>/dev/null || echo 5.23.0)"

make_peer() {  # name, then pip requirements
  local name="$1"; shift
  local dir="$here/.venvs/$name"
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c 'import trl' 2>/dev/null; then
    echo "[setup_peers] $name: ready ($("$dir/bin/python" -c 'import trl, transformers; print("trl", trl.__version__, "transformers", transformers.__version__)'))"
    return
  fi
  echo "[setup_peers] creating $dir"
  "$python" -m venv "$dir"
  "$dir/bin/pip" install -q --upgrade pip
  "$dir/bin/pip" install -q "$torch_spec"
  "$dir/bin/pip" install -q "$torch_spec" "$@"
  "$dir/bin/python" -c 'import torch, trl, transformers; print("[setup_peers]", "'"$name"'", "torch", torch.__version__, "trl", trl.__version__, "transformers", transformers.__version__)'
}

want="${1:-all}"
if [ "$want" = all ] || [ "$want" = trl-0.11.4 ]; then
  make_peer trl-0.11.4 "trl==0.11.4" "transformers==4.46.3" "accelerate<1.2" "datasets<3.2" "tokenizers<0.21" "rich" "tyro" "psutil" "peft==0.13.2"
fi
if [ "$want" = all ] || [ "$want" = trl-latest ]; then
  make_peer trl-latest "trl" "transformers==$rlft_tf" "psutil" "peft"
fi
