"""Built-in datasets: local files, saved and hub datasets, offline generated problems."""

from lmmr1_plugins.datasets.arithmetic import arithmetic
from lmmr1_plugins.datasets.benchmarks import LOADERS
from lmmr1_plugins.datasets.files import hub, json_file, jsonl, parquet, saved
from lmmr1_plugins.datasets.generators import geometry, perce_reason
from lmmr1_plugins.datasets.perception import perception

from lmmr1_core import hookimpl


@hookimpl
def register_datasets(register):
    register("jsonl", jsonl)
    register("json", json_file)
    register("parquet", parquet)
    register("saved", saved)
    register("hub", hub)
    register("arithmetic", arithmetic)
    register("geometry", geometry)
    register("perce_reason", perce_reason)
    register("perception", perception)
    for name, loader in LOADERS.items():
        register(name, loader)
