"""An example MGT domain package for lmmr1, holding both kinds of domain (docs/domains.md builds it):

- a data domain: ``bar_charts`` (a dataset of generated bar-chart questions) and ``chart_answer``
  (its verifier), in ``charts.py``;
- an env domain: ``maze`` (a multi-turn grid maze with image + text observations), in ``maze.py``.
"""

from lmmr1_core import hookimpl
from lmmr1_domain_example.charts import bar_charts, chart_answer
from lmmr1_domain_example.maze import MazeEnv


@hookimpl
def register_datasets(register):
    register("bar_charts", bar_charts)


@hookimpl
def register_rewards(register):
    register("chart_answer", chart_answer)


@hookimpl
def register_envs(register):
    register("maze", MazeEnv)
