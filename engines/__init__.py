"""Engines: compile the exported graphs with TensorRT, TensorRT-RTX or ONNX Runtime behind one interface."""
