#!/usr/bin/env bash
# Creates .venv-mlx: mlx (CPU build) + mlx-lm, used only by the mlx-lm cross-check
# (tests/crosscheck). No torch here. Idempotent: a stamp keyed on the pin list below
# plus a working import means there is nothing to do.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${repo_root}/.venv-mlx"
stamp="${venv}/.duet-mlx-pins"
python_bin="${PYTHON:-python3.11}"
command -v "${python_bin}" >/dev/null 2>&1 || python_bin=python3

# The full closure, pinned exactly (mlx-lm pulls transformers for its tokenizer import).
pins="
mlx==0.32.4
mlx-cpu==0.32.4
mlx-lm==0.32.2
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
click==8.5.1
filelock==4.2.11
fsspec==2026.9.0
h11==0.16.0
hf-xet==1.8.0
httpcore2==2.16.2
httpx2==2.16.2
huggingface_hub==2.4.0
idna==3.20
Jinja2==3.1.6
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
numpy==2.4.6
packaging==26.3
protobuf==7.36.2
pydantic==2.14.3
pydantic_core==2.50.4
Pygments==2.21.0
PyYAML==6.0.3
regex==2026.11.15
rich==15.0.0
safetensors==0.8.0
sentencepiece==0.2.3
shellingham==1.5.4
tokenizers==0.23.3
tqdm==4.70.1
transformers==5.23.0
truststore==0.10.5
typer==0.29.2
typing-inspection==0.4.5
typing_extensions==4.16.0
"
pins_key="$(printf '%s' "${pins}" | sha256sum | cut -d' ' -f1)"

venv_works() {
    [[ -f "${stamp}" && "$(cat "${stamp}")" == "${pins_key}" ]] || return 1
    "${venv}/bin/python" -c "import mlx.core, mlx_lm.utils, mlx_lm.models.bailing_hybrid" \
        >/dev/null 2>&1
}

if venv_works; then
    echo "setup_mlx_venv: ${venv} is up to date (pins ${pins_key:0:12})"
    exit 0
fi

echo "setup_mlx_venv: creating ${venv} with ${python_bin} ($("${python_bin}" --version 2>&1))"
rm -rf "${venv}"
"${python_bin}" -m venv "${venv}"
req_file="$(mktemp)"
trap 'rm -f "${req_file}"' EXIT
printf '%s\n' "${pins}" | sed '/^$/d' >"${req_file}"
echo "setup_mlx_venv: pip install (mlx 0.32.4, mlx-cpu 0.32.4, mlx-lm 0.32.2 and their pinned deps)"
"${venv}/bin/pip" install --quiet --disable-pip-version-check -r "${req_file}" 2> >(grep -v \
    "is ignored: it is neither a file nor a directory" >&2)
"${venv}/bin/python" -c "import mlx.core as mx, mlx_lm; print('setup_mlx_venv: mlx', \
mx.__version__, 'on', mx.default_device(), '| mlx-lm', mlx_lm.__version__)"
printf '%s' "${pins_key}" >"${stamp}"
echo "setup_mlx_venv: done"
