"""Reference-model training on procedural phantoms (PyTorch; the `train` extra only).

Nothing here is imported by the serving path: the appliance runs the exported ONNX files.
"""
