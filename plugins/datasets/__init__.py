"""Built-in datasets: local files and offline generated problems."""

from lmmr1_plugins.datasets.arithmetic import arithmetic
from lmmr1_plugins.datasets.files import jsonl

from lmmr1_core import hookimpl


@hookimpl
def register_datasets(register):
    register("jsonl", jsonl)
    register("arithmetic", arithmetic)
