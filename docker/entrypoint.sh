#!/bin/bash
# Entry point of the flowscore image: seeds the models volume, then runs `flowscore "$@"`
# (`serve` by default, so `docker run IMAGE train ...` or `... eval ...` work too).
#
# Seeding: every <name>/<version> of the baked-in models ($FLOWSCORE_SEED_MODELS_FROM) that is
# missing from $FLOWSCORE_MODELS_DIR is copied in (atomically: copy, then rename). Nothing there
# is ever overwritten, so trained versions and live pointers survive restarts and image upgrades.
# Set FLOWSCORE_SEED_MODELS_FROM= (empty) to turn it off.
set -euo pipefail

seed=${FLOWSCORE_SEED_MODELS_FROM:-}
models=${FLOWSCORE_MODELS_DIR:-/models}
if [ -n "$seed" ] && [ -d "$seed" ]; then
  mkdir -p "$models"
  for src in "$seed"/*/*/; do
    [ -f "$src/card.json" ] || continue
    version=$(basename "$src")
    name=$(basename "$(dirname "$src")")
    dest="$models/$name/$version"
    [ -e "$dest" ] && continue
    mkdir -p "$models/$name"
    tmp="$models/$name/.$version.tmp-seed-$$"
    rm -rf "$tmp"
    cp -R "$src" "$tmp"
    mv "$tmp" "$dest"
    echo "flowscore-entrypoint: seeded $name/$version into $models" >&2
  done
  # The default name and each name's live version, where the volume has none yet.
  for pointer in "$seed"/default.json "$seed"/*/live.json; do
    [ -f "$pointer" ] || continue
    dest="$models/${pointer#"$seed"/}"
    [ -e "$dest" ] || cp "$pointer" "$dest"
  done
fi
mkdir -p "${FLOWSCORE_DATA_DIR:-/data}"

# `docker run IMAGE --threads 2 serve` and `docker run IMAGE serve` both work.
exec flowscore "$@"
