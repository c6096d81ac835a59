"""ONNX: exporting a ported file as a hashed, self-describing graph (``export``, with
``trace``, the torch side), static checks and metadata of a graph (``graph``, onnx only), the
inference engines that run it (``engines``: ONNX Runtime, OpenVINO) and its verification
(``verify``).
"""
