"""TFLite metadata inside the `.tflite` file, the way MediaPipe Tasks and the TFLite Task Library read it.

An image classifier loads in those clients only when the model file carries metadata: the input's
colour space, size and normalization, the output's label file packed into the file, and the score
range. `add_metadata` writes it with MediaPipe's own writer
(`mediapipe.tasks.python.metadata.metadata_writers.image_classifier`); `read_metadata` reads it back.

The bridge. MediaPipe's wheels from 0.10.30 on ship the metadata writers but not the native module
they import, `mediapipe.tasks.cc.metadata.python._pywrap_metadata_version`, whose one function,
`GetMinimumMetadataParserVersion`, stamps the oldest metadata parser that understands a buffer.
`keras_cnn.utils.compat.install_mediapipe_version_module` supplies that function, computed by the rules of the
metadata schema (`min_parser_version`), and only when MediaPipe lacks the module; `tests/test_mobile.py`
fails the day a MediaPipe wheel ships it again, so that this bridge can go. The older ways, MediaPipe
0.10.21 and `tflite-support` 0.4.4, pin protobuf below 5 and 4, which TensorFlow 2.21 cannot use.
"""
import importlib.util
import json
import types

from keras_cnn.utils import compat
from keras_cnn.utils.io import LABELS_FILE, labels_text

_FIRST_VERSION = (1, 0, 0)  # of the metadata schema; later members raise it (`min_parser_version`)


def available():
    """Whether MediaPipe (the `mobile` extra) is installed."""
    return importlib.util.find_spec("mediapipe") is not None


def add_metadata(model_bytes, *, name, description, version, author, license, class_names, image_size,
                 normalization):
    """`model_bytes` with image-classifier metadata and `class_names` packed in as `labels.txt`.

    `image_size` is (height, width); `normalization` the (mean, std) that maps the pixels a camera gives
    to what the input tensor takes: (0, 1) for raw pixels.
    """
    check_class_names(class_names)
    metadata, writers = mediapipe_modules()
    mean, std = normalization
    labels = writers.metadata_writer.Labels().add(list(class_names))
    writer = writers.image_classifier.MetadataWriter.create(bytearray(model_bytes), [float(mean)], [float(std)],
                                                            labels)
    with_labels, _ = writer.populate()
    model_metadata = _unpack(metadata.get_metadata_buffer(with_labels))
    model_metadata.name, model_metadata.description, model_metadata.version = name, description, version
    model_metadata.author, model_metadata.license = author, license
    _set_image_size(model_metadata, *image_size)
    populator = metadata.MetadataPopulator.with_model_buffer(bytearray(model_bytes))
    populator.load_metadata_buffer(_pack(model_metadata))
    populator.load_associated_file_buffers({LABELS_FILE: labels_text(class_names).encode()})
    populator.populate()
    return bytes(populator.get_model_buffer())


def read_metadata(model_bytes):
    """(metadata as a dict, {packed file name: bytes}) of a `.tflite` file's bytes; (None, {}) without metadata."""
    metadata, _ = mediapipe_modules()
    try:
        displayer = metadata.MetadataDisplayer.with_model_buffer(bytearray(model_bytes))
    except ValueError:  # "The model does not have metadata."
        return None, {}
    files = {name: displayer.get_associated_file_buffer(name) for name in displayer.get_packed_associated_file_list()}
    return json.loads(displayer.get_metadata_json()), files


def min_parser_version(buffer):
    """The oldest metadata parser version that understands every field of a ModelMetadata flatbuffer, "1.0.0"
    and up: the largest version among the schema members the buffer uses (MediaPipe's metadata_version.cc)."""
    schema = _schema()
    root = schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAsModelMetadata(bytes(buffer), 0))
    versions = [_FIRST_VERSION, *_file_versions(schema, root.associatedFiles)]
    for subgraph in root.subgraphMetadata or []:
        versions += _subgraph_versions(schema, subgraph)
    return ".".join(map(str, max(versions)))


def _subgraph_versions(schema, subgraph):
    versions = list(_file_versions(schema, subgraph.associatedFiles))
    for tensor in (subgraph.inputTensorMetadata or []) + (subgraph.outputTensorMetadata or []):
        versions += _file_versions(schema, tensor.associatedFiles)
        versions += _unit_versions(schema, tensor.processUnits)
        content = tensor.content
        if content is not None and content.contentPropertiesType == schema.ContentProperties.AudioProperties:
            versions.append((1, 3, 0))
    for units in (subgraph.inputProcessUnits, subgraph.outputProcessUnits):
        if units is not None:
            versions += [(1, 1, 0), *_unit_versions(schema, units)]
    if subgraph.inputTensorGroups is not None or subgraph.outputTensorGroups is not None:
        versions.append((1, 2, 0))
    if subgraph.customMetadata is not None:
        versions.append((1, 5, 0))
    return versions


def _file_versions(schema, files):
    for file in files or []:
        if file.type == schema.AssociatedFileType.VOCABULARY:
            yield 1, 0, 1
        if file.type == schema.AssociatedFileType.SCANN_INDEX_FILE:
            yield 1, 4, 0
        if file.version is not None:
            yield 1, 4, 1


def _unit_versions(schema, units):
    options = schema.ProcessUnitOptions
    since = {options.BertTokenizerOptions: (1, 1, 0), options.SentencePieceTokenizerOptions: (1, 1, 0),
             options.RegexTokenizerOptions: (1, 2, 1)}
    return [since[unit.optionsType] for unit in units or [] if unit.optionsType in since]


def check_class_names(class_names):
    if not class_names:
        raise ValueError("TFLite metadata needs the class names to pack as the output's label file, and the model "
                         "has none: export a run folder, or pass class_names= or data with class names. "
                         "Received: class_names=None")
    bad = [name for name in class_names if not str(name).strip() or "\n" in str(name)]
    if bad:
        raise ValueError(f"class names become lines of {LABELS_FILE}: they must be non-empty and have no line break. "
                         f"Received: class_names={bad[:3]!r}")


def _set_image_size(model_metadata, height, width):
    schema = _schema()
    properties = model_metadata.subgraphMetadata[0].inputTensorMetadata[0].content.contentProperties
    properties.defaultSize = schema.ImageSizeT()
    properties.defaultSize.height, properties.defaultSize.width = int(height), int(width)


def _unpack(buffer):
    schema = _schema()
    return schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAsModelMetadata(bytes(buffer), 0))


def _pack(model_metadata):
    import flatbuffers

    metadata, _ = mediapipe_modules()
    builder = flatbuffers.Builder(0)
    builder.Finish(model_metadata.Pack(builder), metadata.MetadataPopulator.METADATA_FILE_IDENTIFIER)
    return builder.Output()


def _schema():
    from mediapipe.tasks.metadata import metadata_schema_py_generated

    return metadata_schema_py_generated


def mediapipe_modules():
    """MediaPipe's `metadata` module and its writers, with the version module supplied where the wheel lacks it."""
    if not available():
        raise ImportError('TFLite metadata is written with MediaPipe, which is not installed: '
                          'pip install -e ".[mobile]"')
    compat.install_mediapipe_version_module(min_parser_version)
    from mediapipe.tasks.python.metadata import metadata
    from mediapipe.tasks.python.metadata.metadata_writers import image_classifier, metadata_writer

    return metadata, types.SimpleNamespace(image_classifier=image_classifier, metadata_writer=metadata_writer)

