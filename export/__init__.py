"""Per-patch UNet export: ONNX graphs with stale halo / KV / GroupNorm inputs and a manifest (docs/design.md)."""
