#!/usr/bin/env bash
# Fetch the reference implementation (distrifuser) and stage its pinned wheels for an offline GPU host (issue 8).
#
# Nothing of the reference is committed: it goes into .reference/ (git-ignored through .git/info/exclude, not
# .gitignore). Layout written:
#   .reference/distrifuser/distrifuser/...      the package (git archive of the mirror's HEAD; COMMIT names it)
#   .reference/wheels/pNN/                      wheel parts of at most 60 MiB, each with collect.sh and env.sh
#
# Usage:  benchmarks/reference/prepare.sh GIT_DIR
#   GIT_DIR: the bare git directory of github:mit-han-lab/distrifuser (what the agent tool `fetch` returns, e.g.
#   /work/.mirror/mit-han-lab+distrifuser/repo; a plain `git clone --bare` works the same).
#
# Why not /work/shared/offline-gpu/stage directly: it always adds the project's own wheels (diffusers 0.42.1, ...)
# and installs into /tmp/gpu-site, where diffusers 0.24 and 0.42 would overwrite each other. This script uses the
# same download flags and cache and the same part/collect/env scheme, but its own folders on the host
# (/tmp/ref-wheels, /tmp/ref-site), so the project's environment and the reference's stay apart.
#
# Pins (all exist as Python 3.12 wheels; checked with pip download --python-version 3.12 --only-binary=:all:):
#   diffusers==0.24.0       distrifuser's setup.py pins it
#   transformers==4.36.2    contemporary with diffusers 0.24 (Dec 2023); the host's transformers 5.x is shadowed
#   tokenizers==0.15.2      transformers 4.36 needs tokenizers>=0.14,<0.19 (host: 0.23)
#   huggingface_hub==0.20.3 diffusers 0.24 imports cached_download (gone in 0.26); host: 1.x
# Not staged: accelerate and peft (optional for diffusers 0.24; run_distrifuser.py hides the host's copies),
# torch (the host's 2.11 is used; distrifuser needs >= 2.2), numpy/safetensors/Pillow/regex/requests/filelock/
# importlib_metadata/pyyaml/tqdm/fsspec (on the host already; versions there work with these pins, checked on CPU
# with numpy 2.4 and safetensors 0.8).
set -euo pipefail
git_dir=${1:?usage: prepare.sh GIT_DIR (bare git dir of mit-han-lab/distrifuser)}
top=$(git rev-parse --show-toplevel)
ref=$top/.reference
pins=(diffusers==0.24.0 transformers==4.36.2 tokenizers==0.15.2 huggingface_hub==0.20.3)

grep -qxF "/.reference/" "$top/.git/info/exclude" 2>/dev/null || echo "/.reference/" >> "$top/.git/info/exclude"

# 1. the source (the package only: assets/ holds several MB of images nobody needs)
rm -rf "$ref/distrifuser"; mkdir -p "$ref/distrifuser"
git --git-dir="$git_dir" archive HEAD distrifuser setup.py LICENSE.txt README.md | tar x -C "$ref/distrifuser"
git --git-dir="$git_dir" rev-parse HEAD > "$ref/distrifuser/COMMIT"
echo "distrifuser $(cat "$ref/distrifuser/COMMIT") -> $ref/distrifuser"

# 2. the wheels, in parts
cache=${OFFLINE_GPU_CACHE:-$HOME/.cache/offline-gpu-wheels}
mkdir -p "$cache"
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform any)
python3 -m pip download -q --no-deps "${plat[@]}" -d "$cache" "${pins[@]}"
rm -rf "$ref/wheels"; mkdir -p "$ref/wheels"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
names=()
for spec in "${pins[@]}"; do
  n=${spec%%==*}; v=${spec#*==}; n=${n//-/_}
  f=$(ls "$cache"/${n}-${v}-*.whl 2>/dev/null | head -n 1)
  [[ -n $f ]] || { echo "prepare: no wheel for $spec in $cache" >&2; exit 1; }
  names+=("$(basename "$f")"); cp "$f" "$work/"
done
(cd "$work" && tar cf - "${names[@]}") | split -b 60M -d -a 2 - "$work/wheels.tar.part"
parts=("$work"/wheels.tar.part*)
for p in "${parts[@]}"; do
  d="$ref/wheels/p${p##*part}"; mkdir -p "$d"; mv "$p" "$d/"
  cat > "$d/collect.sh" <<'SH'
#!/usr/bin/env bash
# copies this part to /tmp/ref-wheels; once all parts are there, `source /tmp/ref-wheels/env.sh`
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p /tmp/ref-wheels && cp "$here"/wheels.tar.part* "$here/env.sh" /tmp/ref-wheels/
ls /tmp/ref-wheels
SH
  cat > "$d/env.sh" <<SH
# source me on the GPU host once every part is in /tmp/ref-wheels: installs the pinned packages into /tmp/ref-site
# and puts it (then the repository) FIRST on PYTHONPATH, so they shadow the host's newer diffusers/transformers/hub.
# Do not also source the project's /tmp/gpu-wheels/env.sh in this shell (its diffusers 0.42 would come first).
if [ ! -f /tmp/ref-site/.complete ]; then
  n=\$(ls /tmp/ref-wheels/wheels.tar.part* 2>/dev/null | wc -l)
  if [ "\$n" -ne ${#parts[@]} ]; then echo "env.sh: \$n of ${#parts[@]} parts in /tmp/ref-wheels" >&2; return 1 2>/dev/null || exit 1; fi
  mkdir -p /tmp/ref-wheels/w && cat /tmp/ref-wheels/wheels.tar.part* | tar xf - -C /tmp/ref-wheels/w &&
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ref-site /tmp/ref-wheels/w/*.whl &&
  touch /tmp/ref-site/.complete
fi
export PYTHONPATH=/tmp/ref-site:\$PWD
export DISTRIFUSER_SRC=\$PWD/.reference/distrifuser
SH
  chmod +x "$d/collect.sh"
done
echo "staged ${#names[@]} wheels (${names[*]}) in ${#parts[@]} part(s):"
for d in "$ref"/wheels/p*; do echo "  $d  ($(du -sh "$d" | cut -f1))"; done
cat <<EOF
On the GPU host (device calls; .reference is git-ignored, so name it in carry):
  one call per part:  carry [".reference/distrifuser", ".reference/wheels/pNN"]  command: bash .reference/wheels/pNN/collect.sh
  then the run:       carry [".reference/distrifuser"]  command:
    source /tmp/ref-wheels/env.sh && python3 -m torch.distributed.run --nproc_per_node N \\
      benchmarks/reference/run_distrifuser.py --size 2048 --steps 8 --warmup 2 --out \$OUT/ref-gN.json
With a single part, both fit in one call: carry [".reference"] and
    bash .reference/wheels/p00/collect.sh && source /tmp/ref-wheels/env.sh && python3 -m torch.distributed.run ...
EOF
