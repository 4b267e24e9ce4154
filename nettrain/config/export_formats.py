"""nettrain-export's formats (name -> file suffix) and the tolerance of its check: read by the
command's --help before torch is imported, and by the export itself (nettrain.engine.exporting)."""

FORMATS = {"safetensors": ".safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx", "exported": ".pt2"}
RTOL, ATOL = 1e-4, 1e-5  # the exported model's output against the eager model's
CHECK_BATCH = 2  # inputs in the batch both are run on
