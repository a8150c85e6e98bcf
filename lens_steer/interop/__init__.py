"""Interop: lens_steer vectors for llama.cpp, lm-evaluation-harness, steering-vectors and repeng, and theirs
for lens_steer. The layer convention is in :mod:`lens_steer.interop.convention`."""

from lens_steer.interop.convention import LAYER_TABLE, layer_table_markdown
from lens_steer.interop.export import EXPORT_FORMATS, ExportResult, export_vector
from lens_steer.interop.imports import IMPORT_FORMATS, ForeignVector, from_object, import_vector, read_gguf
from lens_steer.interop.peers import to_repeng, to_steering_vectors

__all__ = ["EXPORT_FORMATS", "ExportResult", "ForeignVector", "IMPORT_FORMATS", "LAYER_TABLE", "export_vector",
           "from_object", "import_vector", "layer_table_markdown", "read_gguf", "to_repeng", "to_steering_vectors"]
