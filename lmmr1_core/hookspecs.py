"""The hooks a plugin can implement. Grow them by adding arguments, never by renaming."""

import pluggy

hookspec = pluggy.HookspecMarker("lmmr1")
hookimpl = pluggy.HookimplMarker("lmmr1")


@hookspec
def register_rewards(register):
    """Register rewards: ``register(name, reward)``, ``reward(prompts, completions, **columns)``."""


@hookspec
def register_datasets(register):
    """Register dataset loaders: ``register(name, loader)``, ``loader(**cfg) -> Iterable[Sample]``."""


@hookspec
def register_envs(register):
    """Register multi-turn environments: ``register(name, env_factory)``."""


@hookspec
def register_models(register):
    """Register model backends: ``register(name, backend_factory)``, ``backend_factory(model_config)``."""


@hookspec
def register_stages(register):
    """Register stage kinds: ``register(kind, stage_runner)``, ``stage_runner(ctx) -> None``."""


@hookspec
def register_algorithms(register):
    """Register policy-optimisation algorithms: ``register(name, algorithm_factory)``."""


@hookspec
def register_rollout_engines(register):
    """Register rollout engines: ``register(name, engine_factory)``, ``engine_factory(backend, model, stage)``."""


@hookspec
def on_stage_start(stage, config, output_dir):
    """Called before a stage's first step (also when it resumes)."""


@hookspec
def on_step_end(stage, step, metrics):
    """Called after every optimizer step with that step's metrics dict."""


@hookspec
def on_stage_end(stage, output_dir, metrics):
    """Called once a stage has written its final checkpoint."""
