"""Ready checks for env and reward authors: call them from your plugin's tests.

    from lmmr1_core.testing import check_env, check_reward

    def test_my_env():
        check_env("maze", options={"size": 5}, actions=["<answer>Up</answer>"], max_turns=20)

    def test_my_reward():
        check_reward("chart_answer", completions=["<answer>7</answer>", "<answer>3</answer>"],
                     expected=[1.0, 0.0], answer=["7", "7"])

Each check raises ``AssertionError`` naming the check and what broke, so a plain pytest test is enough.
What they hold a plugin to is what the core relies on (docs/plugins.md, "Contracts"): ``reset`` is a
pure function of the seed, ``step`` takes any text (empty, garbage, a megabyte) without raising, every
observation's images decode, an episode ends on its own, and a reward returns one finite number or
``None`` per completion, independently of the other rows of its batch.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from lmmr1_core.types import Observation

# Responses a policy really produces early in training, and some it should never produce.
GARBAGE = [
    "",
    "   ",
    "\n\n\t",
    "<answer></answer>",
    "<answer>   </answer>",
    "<answer>",
    "</answer><answer>",
    "<answer><answer>Up</answer>",
    "<answer>fly to the moon</answer>",
    "<answer>-1e309</answer>",
    "<answer>" + "Up " * 5_000 + "</answer>",
    "<answer>" + "Up||" * 2_000 + "</answer>",
    "<think>" * 1_000,
    "x" * 1_000_000,
    "\x00\x01\x1b[31m\ufffd\ud7ff",
    "🙂 ←↑→↓ 左" * 50,
    '{"action": "up"}',
    "None",
]


def _fail(check: str, what: str) -> AssertionError:
    return AssertionError(f"{check}: {what}")


def _image_digest(image: Any, where: str) -> str:
    """Decode one observation image (PIL image, encoded bytes or a file path) and hash its pixels."""
    from PIL import Image

    try:
        if isinstance(image, Image.Image):
            img = image
        elif isinstance(image, (bytes, bytearray)):
            img = Image.open(io.BytesIO(image))
        elif isinstance(image, (str, Path)):
            img = Image.open(str(image).removeprefix("file://"))
        else:
            raise TypeError(f"a {type(image).__name__}; expected a PIL image, encoded bytes or a path")
        img.load()
        rgb = img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - any failure to decode is the finding
        raise _fail("observation", f"{where}: image does not decode: {exc}") from None
    if rgb.width < 1 or rgb.height < 1:
        raise _fail("observation", f"{where}: image is {rgb.width}x{rgb.height}")
    return hashlib.sha1(rgb.tobytes() + f"{rgb.size}".encode()).hexdigest()


def check_observation(obs: Any, where: str = "observation", require_images: bool = True) -> tuple:
    """An ``Observation`` with text and decodable images; returns a fingerprint (text, image hashes)."""
    if not isinstance(obs, Observation):
        raise _fail("observation", f"{where}: got {type(obs).__name__}, expected lmmr1_core.Observation")
    if not isinstance(obs.text, str):
        raise _fail("observation", f"{where}: text is a {type(obs.text).__name__}, not a str")
    if not isinstance(obs.images, list):
        raise _fail("observation", f"{where}: images is a {type(obs.images).__name__}, not a list")
    if require_images and not obs.images:
        raise _fail("observation", f"{where}: no image (pass require_images=False for a text-only env)")
    return obs.text, tuple(_image_digest(img, f"{where}, image {i}") for i, img in enumerate(obs.images))


def check_step_result(result: Any, where: str, require_images: bool = True) -> tuple:
    """``(Observation, real reward, bool done, info with a bool "success")``; returns a fingerprint."""
    if not isinstance(result, tuple) or len(result) != 4:
        raise _fail("step", f"{where}: returned {type(result).__name__}, expected (obs, reward, done, info)")
    obs, reward, done, info = result
    if isinstance(reward, bool) or not isinstance(reward, Real) or not math.isfinite(float(reward)):
        raise _fail("step", f"{where}: reward {reward!r} is not a finite number")
    if not isinstance(done, bool):
        raise _fail("step", f"{where}: done is {done!r}, expected a bool")
    if not isinstance(info, dict) or not isinstance(info.get("success"), bool):
        raise _fail("step", f"{where}: info must be a dict with a bool 'success', got {info!r:.200}")
    return check_observation(obs, where, require_images), float(reward), done, info["success"]


def _difference(a: tuple, b: tuple) -> str:
    if a[0] != b[0]:
        return f"text {a[0][:300]!r} vs {b[0][:300]!r}"
    return f"{len(a[1])} vs {len(b[1])} images, pixels differ"


def _factory(env: str | Callable[..., Any], options: dict[str, Any] | None) -> Callable[[], Any]:
    if isinstance(env, str):
        from lmmr1_core import load_env

        return lambda: load_env(env, **(options or {}))
    return lambda: env(**(options or {}))


def _close(env: Any) -> None:
    close = getattr(env, "close", None)
    if callable(close):
        close()


def _play(make: Callable[[], Any], seed: int, actions: Sequence[str], require_images: bool) -> list:
    """Reset to ``seed``, then step through ``actions`` until done; every step's fingerprint."""
    env = make()
    try:
        trace = [check_observation(env.reset(seed), f"reset({seed})", require_images)]
        for turn, action in enumerate(actions, 1):
            result = _step(env, action, f"seed {seed}, turn {turn}, action {action[:40]!r}", require_images)
            trace.append(result)
            if result[2]:
                break
        return trace
    finally:
        _close(env)


def _step(env: Any, action: str, where: str, require_images: bool) -> tuple:
    try:
        result = env.step(action)
    except Exception as exc:  # noqa: BLE001 - the contract is that step never raises
        raise _fail("step", f"{where}: raised {type(exc).__name__}: {exc}") from None
    return check_step_result(result, where, require_images)


def check_env(
    env: str | Callable[..., Any],
    options: dict[str, Any] | None = None,
    *,
    actions: Sequence[str] = (),
    seeds: Sequence[int] = (0, 1, 2),
    max_turns: int = 100,
    solutions: dict[int, Sequence[str]] | None = None,
    garbage: Sequence[str] = tuple(GARBAGE),
    require_images: bool = True,
    seeds_differ: bool = True,
    deterministic_steps: bool = True,
) -> None:
    """Every check below on an env: a registered name (with ``options``, the stage file's env keys) or a
    factory (called with ``options``).

    ``actions``: some valid responses (the episode check plays them in turn, then garbage);
    ``max_turns``: the turns within which any episode must end by itself (the env's own limit);
    ``solutions``: per seed, responses that must end the episode with ``info["success"]``;
    ``deterministic_steps=False`` skips the whole-episode replay check (an engine with its own randomness).
    """
    make = _factory(env, options)
    check_reset_determinism(make, seeds, require_images, seeds_differ)
    check_garbage_actions(make, seeds[0], garbage, actions, require_images)
    policy = list(actions) + list(garbage)
    check_termination(make, seeds, policy, max_turns, require_images, replay=deterministic_steps)
    for seed, plan in (solutions or {}).items():
        trace = _play(make, seed, plan, require_images)
        if not trace[-1][3]:
            raise _fail("solution", f"seed {seed}: playing {list(plan)[:10]} did not succeed")
        if not trace[-1][2]:
            raise _fail("solution", f"seed {seed}: the episode succeeded but done is False")


def check_reset_determinism(
    make: Callable[[], Any], seeds: Sequence[int], require_images: bool = True, seeds_differ: bool = True
) -> None:
    """Two fresh envs show the same first observation for a seed, an env reset again after other seeds
    shows it again, and (``seeds_differ``) different seeds do not all look the same."""
    first, second = make(), make()
    try:
        seen = {}
        for seed in seeds:
            a = check_observation(first.reset(seed), f"reset({seed})", require_images)
            b = check_observation(second.reset(seed), f"reset({seed}) on a second env", require_images)
            if a != b:
                raise _fail("reset determinism", f"seed {seed}: two envs show different first observations "
                            f"({_difference(a, b)})")
            seen[seed] = a
        again = check_observation(first.reset(seeds[0]), f"reset({seeds[0]}) again", require_images)
        if again != seen[seeds[0]]:
            raise _fail("reset determinism", f"seed {seeds[0]}: resetting again after other seeds differs "
                        f"({_difference(again, seen[seeds[0]])})")
        if seeds_differ and len(seeds) > 1 and len(set(seen.values())) == 1:
            raise _fail("reset determinism", f"seeds {list(seeds)} all show the same observation: is the seed used?")
    finally:
        _close(first)
        _close(second)


def check_garbage_actions(
    make: Callable[[], Any],
    seed: int,
    garbage: Sequence[str] = tuple(GARBAGE),
    actions: Sequence[str] = (),
    require_images: bool = True,
) -> None:
    """Each garbage response, from a fresh reset: no exception, a well-formed result, no success, the same
    result twice (step is deterministic too), and the env still plays a valid action afterwards."""
    env = make()
    try:
        for action in garbage:
            where = f"seed {seed}, garbage {action[:40]!r}" + (f" ({len(action)} chars)" if len(action) > 40 else "")
            results = []
            for _ in range(2):
                env.reset(seed)
                results.append(_step(env, action, where, require_images))
            if results[0] != results[1]:
                raise _fail("garbage actions", f"{where}: the same response from the same state gave different results")
            if results[0][3]:
                raise _fail("garbage actions", f"{where}: counted as a success")
            for valid in actions[:1]:
                _step(env, valid, f"{where}, then {valid[:40]!r}", require_images)
    finally:
        _close(env)


def check_termination(
    make: Callable[[], Any],
    seeds: Sequence[int],
    policy: Sequence[str],
    max_turns: int,
    require_images: bool = True,
    replay: bool = True,
) -> None:
    """Cycling through ``policy`` from each seed, the env says done within ``max_turns``; the same
    responses from the same seed replay to the same trace."""
    responses = [policy[i % len(policy)] for i in range(max_turns)] if policy else []
    for seed in seeds:
        trace = _play(make, seed, responses, require_images)
        if len(trace) < 2 or not trace[-1][2]:
            raise _fail("termination", f"seed {seed}: not done after {max_turns} turns (the env must end episodes)")
        if replay and _play(make, seed, responses, require_images) != trace:
            raise _fail("step determinism", f"seed {seed}: replaying the same responses gave a different episode")


# -- rewards -------------------------------------------------------------------------------------------

GARBAGE_COMPLETIONS = [g for g in GARBAGE if len(g) <= 20_000] + ["<answer>" + "9" * 10_000 + "</answer>"]


def _check_scores(scores: Any, n: int, where: str) -> list[float | None]:
    if not isinstance(scores, list):
        raise _fail("reward", f"{where}: returned a {type(scores).__name__}, expected a list")
    if len(scores) != n:
        raise _fail("reward", f"{where}: {len(scores)} scores for {n} completions")
    for i, s in enumerate(scores):
        if s is None:
            continue
        if isinstance(s, bool) or not isinstance(s, Real) or not math.isfinite(float(s)):
            raise _fail("reward", f"{where}: score {i} is {s!r}; expected a finite number or None")
    return scores


def check_reward(
    reward: str | Callable[..., list[float | None]],
    completions: Sequence[Any],
    *,
    prompts: Sequence[Any] | None = None,
    expected: Sequence[float | None] | None = None,
    not_applicable: dict[str, list[Any]] | None = None,
    options: dict[str, Any] | None = None,
    **columns: list[Any],
) -> None:
    """TRL's reward contract on a batch: a registered name (with ``options``) or the callable itself.

    One finite number or ``None`` per completion (``expected``, when given, compared within 1e-6); the
    batch reversed gives the scores reversed (rows do not leak into each other); an empty batch gives
    ``[]``; garbage completions (empty, binary, very long) score without raising; and the columns in
    ``not_applicable`` (one row, e.g. ``{"answer": [None]}``) score ``None``.
    """
    if isinstance(reward, str):
        from lmmr1_core import load_reward

        fn = load_reward(reward, **(options or {}))
    else:
        fn = (lambda **kw: reward(**kw, **options)) if options else reward
    n = len(completions)
    if not n:
        raise ValueError("check_reward needs at least one completion")
    prompts = list(prompts) if prompts is not None else [[{"role": "user", "content": "q"}]] * n
    for key, values in columns.items():
        if len(values) != n:
            raise ValueError(f"column {key!r} has {len(values)} values for {n} completions")

    def call(idx: list[int], comps: list[Any] | None = None, cols: dict[str, list[Any]] | None = None):
        cols = cols if cols is not None else {k: [v[i] for i in idx] for k, v in columns.items()}
        comps = comps if comps is not None else [completions[i] for i in idx]
        try:
            return fn(prompts=[prompts[i] for i in idx], completions=comps, **cols)
        except Exception as exc:  # noqa: BLE001
            raise _fail("reward", f"raised {type(exc).__name__}: {exc} on completions {comps!r:.200}") from None

    scores = _check_scores(call(list(range(n))), n, "the batch")
    if expected is not None:
        if len(expected) != n or any(
            (e is None) != (s is None) or (e is not None and abs(float(e) - float(s)) > 1e-6)
            for e, s in zip(expected, scores)
        ):
            raise _fail("reward", f"scores {scores} != expected {list(expected)}")
    backwards = _check_scores(call(list(range(n))[::-1]), n, "the batch reversed")
    if backwards != scores[::-1]:
        raise _fail("reward", f"reversing the batch gave {backwards}, not {scores[::-1]}: rows leak into each other")
    if call([], [], {k: [] for k in columns}) != []:
        raise _fail("reward", "an empty batch must give []")
    g = len(GARBAGE_COMPLETIONS)
    cols = {k: [v[0]] * g for k, v in columns.items()}
    _check_scores(call([0] * g, list(GARBAGE_COMPLETIONS), cols), g, "garbage completions")
    if not_applicable is not None:
        cols = {**{k: [v[0]] for k, v in columns.items()}, **not_applicable}
        got = call([0], [completions[0]], cols)
        if _check_scores(got, 1, "not applicable") != [None]:
            raise _fail("reward", f"columns {not_applicable} should score None (not applicable), got {got}")
