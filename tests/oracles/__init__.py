"""Test oracles: independent computations that prove the product, never part of it (the runtime, the API and the
CLI do not import them; tests/pipeline/test_serving_imports.py checks that).

- simulate: runs an exported work directory's ranks in one process with ONNX Runtime, driven by the manifest;
- reference: an eager-PyTorch DistriFusion reference on a diffusers UNet;
- loop: the denoising loop over diffusers' schedulers (torch), and the runtime's loop on host arrays;
- diffusers_schedule: a diffusers scheduler turned into trt_distri.schedule coefficients by running it on symbols.
Benchmarks import them with the tests folder on sys.path.
"""
