#!/bin/sh
# Init container: put $MODEL_SOURCE into $TSUMUGI_MODEL on the shared model-cache volume, once.
# A marker file says a copy is complete; a partial download (pod killed mid-way) is never served because
# the copy goes to a private temp dir and is renamed into place only when finished.
set -eu
target="${TSUMUGI_MODEL:?}"

# LoRA adapters are not downloaded: the training Job writes them to the volume. Fail here, with a message
# in `kubectl logs -c fetch-model`, rather than let the engine crash-loop on a missing adapter.
check_adapters() {
  for module in $(echo "${TSUMUGI_LORA_MODULES:-}" | tr ',' ' '); do
    adapter="${module#*=}"
    if [ ! -f "$adapter/adapter_config.json" ]; then
      echo "LoRA adapter ${module%%=*} missing at $adapter: run the training Job (k8s/training/qlora) first" >&2
      exit 1
    fi
  done
}

if [ -f "$target/.tsumugi-complete" ]; then
  echo "model cache hit: $target"
  check_adapters
  exit 0
fi
partial="$target.partial-$(hostname)"
rm -rf "$partial"
mkdir -p "$partial"
case "${MODEL_SOURCE:?}" in
  s3://*)
    # Object store: needs an image with the aws CLI (see deploy/README.md, "model from an object store").
    aws s3 sync --only-show-errors "$MODEL_SOURCE" "$partial"
    ;;
  *)
    # Hugging Face hub id; HF_TOKEN comes from the optional tsumugi-hf-token Secret for gated models.
    python3 -c 'import os, sys; from huggingface_hub import snapshot_download; snapshot_download(repo_id=sys.argv[1], revision=sys.argv[2], local_dir=sys.argv[3])' \
      "$MODEL_SOURCE" "${MODEL_REVISION:-main}" "$partial"
    ;;
esac
touch "$partial/.tsumugi-complete"
if [ -f "$target/.tsumugi-complete" ]; then
  rm -rf "$partial"   # another replica finished first
else
  rm -rf "$target"
  mv "$partial" "$target"
fi
echo "model cached: $target"
check_adapters
