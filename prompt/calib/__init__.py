"""Calibrations and templates: where they live (an object store), how they are named, which
one is valid for a job, and how a pilot loads them into its cache."""

from prompt.calib.index import CalibEntry, CalibIndex
from prompt.calib.layout import calib_key, index_key, template_key
from prompt.calib.objectstore import FileStore, ObjectStore, open_store
from prompt.calib.regions import Region, region_of

__all__ = [
    "CalibEntry",
    "CalibIndex",
    "FileStore",
    "ObjectStore",
    "Region",
    "calib_key",
    "index_key",
    "open_store",
    "region_of",
    "template_key",
]
