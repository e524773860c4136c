#!/usr/bin/env bash
# Run on the development machine, in the project's root, before a device run (tests/gpu/README.md):
# copies the offline MNIST / Fashion-MNIST files from $DST_DATA_ROOT into .carry/data and fetches,
# as wheels for the device's Python 3.12, the packages of tests/gpu/packages.txt into .whl.
# Both folders are git-ignored; name them in the device call's `carry`. Prints the bytes carried.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${DST_DATA_ROOT:?set DST_DATA_ROOT to the folder holding mnist/ and fashion-mnist/}"
PY=${PYTHON:-.venv/bin/python}
rm -rf .carry .whl && mkdir -p .carry/data .whl
for name in mnist fashion-mnist; do
  cp -r "$DST_DATA_ROOT/$name" .carry/data/
done
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
while read -r req; do
  case "$req" in ''|'#'*) continue ;; esac
  if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d .whl "$req" 2>/dev/null; then
    "$PY" -m pip wheel --quiet --no-deps -w .whl "$req"  # sdist only (pure Python): build it
  fi
done < tests/gpu/packages.txt
count=$(ls .whl | wc -l)
expected=$(grep -cv -e '^#' -e '^$' tests/gpu/packages.txt)
[ "$count" -eq "$expected" ] || { echo "expected $expected wheels, got $count" >&2; exit 1; }
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
carried=$(du -cb .carry .whl | tail -1 | cut -f1)
echo "wheels: $count; carried: $carried bytes; tracked tree: $tree bytes;" \
     "total $((carried + tree)) of 67108864 (64 MiB)"
[ $((carried + tree)) -lt 67108864 ] || { echo "over the 64 MiB a device call carries" >&2; exit 1; }
