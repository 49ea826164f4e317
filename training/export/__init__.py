"""Publishing a fine-tuned model for serving without LoRA: merge the adapter into its base, quantize to W4A16."""
