"""featcache.rawdata: the raw inputs both stages read.

Sources list a dataset's rows (stable ids, labels) and load one row's raw input (an RGB PIL image
or a string) from an image folder, a CSV/JSONL manifest, Fashion-MNIST idx files, text folders,
WebDataset tar shards or Parquet; views replay recorded crops and flips; ``source_of`` reopens the
inputs a store was built from. Knows nothing about stores or models.
"""

from .decode import clean_reason, pixel_limit
from .folders import image_folder, text_categories, text_folder
from .identity import dataset_fingerprint
from .idx_files import default_fashion_mnist_root, fashion_mnist
from .kinds import KINDS, open_source, subset
from .manifests import manifest
from .parquet_tables import parquet
from .reopen import SourceMismatch, source_of
from .source import InputError, Source, SourceChanged, SourceError, head
from .webdataset_shards import webdataset

__all__ = [
    "InputError", "KINDS", "Source", "SourceChanged", "SourceError", "SourceMismatch", "clean_reason", "dataset_fingerprint",
    "default_fashion_mnist_root", "fashion_mnist", "head", "image_folder", "manifest", "open_source", "parquet",
    "pixel_limit", "source_of", "subset", "text_categories", "text_folder", "webdataset",
]
