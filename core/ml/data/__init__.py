"""Reading training data: CSV, TSV and plain text, detected from the bytes, streamed, never read whole.

The pipeline is ``inspect_file`` (what is this file: encoding, delimiter, header, quoting, columns, rows),
``check_config`` (does a training config fit it: every problem at once), ``load_texts`` (the texts and
labels a run trains on) and ``split_indices`` (the seeded, stratified train/validation split).

One module per part, each importing only the ones listed before it:

- ``sniff``: encoding, delimiter, quoting and header, detected from the first ``SAMPLE_BYTES``.
- ``read``: the streaming pass over the records (restarting when the file contradicts its sample), column
  names, ``inspect_file``.
- ``examples``: config columns resolved against the file, the (text, label) of every usable row,
  ``load_texts``.
- ``split``: ``split_indices``.
- ``check``: ``check_config``.
"""

from core.ml.data.check import check_config
from core.ml.data.examples import TextData, load_texts
from core.ml.data.read import PREVIEW_CHARS, PREVIEW_ROWS, DatasetInfo, inspect_file
from core.ml.data.sniff import MAX_FIELD_CHARS, SAMPLE_BYTES, FileFormat
from core.ml.data.split import split_indices

__all__ = [
    "MAX_FIELD_CHARS",
    "PREVIEW_CHARS",
    "PREVIEW_ROWS",
    "SAMPLE_BYTES",
    "DatasetInfo",
    "FileFormat",
    "TextData",
    "check_config",
    "inspect_file",
    "load_texts",
    "split_indices",
]
