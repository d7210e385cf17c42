"""Built-in stage kinds. The loops live in the core (``lmmr1_core.rl``/``sft``); this registers them."""

from lmmr1_core import hookimpl
from lmmr1_core.evaluate import run_eval
from lmmr1_core.rl import run_rl
from lmmr1_core.sft import run_sft


@hookimpl
def register_stages(register):
    register("rl", run_rl)
    register("sft", run_sft)
    register("eval", run_eval)
