"""Google Research Football, the paper's unseen transfer environment, on the real engine.

The model sees a minimap drawn from the engine's raw observation (our team blue, the opponents
red, the ball white, the controlled player ringed in yellow; we attack the goal on the right) and
a short text description, and names an action inside ``<answer>``. Academy scenarios are chosen
in the stage file; success means our side scored. Needs the ``football`` extra (see README).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw

from lmmr1_core import Observation
from lmmr1_core.errors import LmmError

SCENARIOS = {
    "empty_goal_close": "academy_empty_goal_close",
    "empty_goal": "academy_empty_goal",
    "run_to_score": "academy_run_to_score",
    "run_to_score_with_keeper": "academy_run_to_score_with_keeper",
    "pass_and_shoot_with_keeper": "academy_pass_and_shoot_with_keeper",
}
# The documented subset of the engine's default action set (name -> action id).
ACTIONS = {
    "idle": 0, "left": 1, "up-left": 2, "up": 3, "up-right": 4, "right": 5, "down-right": 6, "down": 7,
    "down-left": 8, "short pass": 11, "shoot": 12, "sprint": 13,
}  # fmt: skip
ALIASES = {"pass": "short pass", "shot": "shoot", "top": "up", "bottom": "down", "upleft": "up-left",
           "upright": "up-right", "downleft": "down-left", "downright": "down-right"}  # fmt: skip
INSTALL = (
    "the football env needs Google Research Football: apt-get install libsdl2-dev libsdl2-image-dev "
    "libsdl2-ttf-dev libsdl2-gfx-dev libboost-python-dev libboost-thread-dev libboost-system-dev "
    "libboost-filesystem-dev libgl1-mesa-dev libegl-dev libegl1-mesa-dev, then "
    "pip install 'lmmr1[football]' and pip install --no-build-isolation gfootball==2.10.2"
)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
W, H = 288, 216  # minimap size; the pitch spans x in [-1, 1], y in [-0.42, 0.42]


def _xy(p) -> tuple[float, float]:
    return (float(p[0]) + 1) / 2 * (W - 1), (float(p[1]) + 0.42) / 0.84 * (H - 1)


def draw_minimap(raw: dict[str, Any]) -> Image.Image:
    img = Image.new("RGB", (W, H), (40, 130, 50))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, W - 1, H - 1], outline="white", width=2)
    d.line([W // 2, 0, W // 2, H], fill="white", width=1)
    for x0, x1 in ((0, 22), (W - 23, W - 1)):
        d.rectangle([x0, H * 0.3, x1, H * 0.7], outline="white", width=1)
    for p in raw["right_team"]:
        x, y = _xy(p)
        d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=(220, 40, 40))
    for i, p in enumerate(raw["left_team"]):
        x, y = _xy(p)
        d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=(40, 90, 230))
        if i == raw["active"]:
            d.ellipse([x - 8, y - 8, x + 8, y + 8], outline=(250, 220, 0), width=2)
    bx, by = _xy(raw["ball"])
    d.ellipse([bx - 3, by - 3, bx + 3, by + 3], fill="white", outline="black")
    return img


def _coord(v: float) -> float:
    """Rounded to the 2 places shown, and never -0.00: the engine's start positions jitter by ~1e-3."""
    return round(float(v), 2) + 0.0


def describe(raw: dict[str, Any]) -> str:
    me = [_coord(v) for v in raw["left_team"][raw["active"]]]
    ball = [_coord(v) for v in raw["ball"]]
    owner = {-1: "nobody", 0: "your team", 1: "the opponents"}.get(int(raw.get("ball_owned_team", -1)), "nobody")
    score = f"{raw['score'][0]}-{raw['score'][1]}"
    return (
        f"You control the ringed blue player at x={me[0]:+.2f}, y={me[1]:+.2f} and attack the goal on the right "
        f"(x=+1). The ball is at x={ball[0]:+.2f}, y={ball[1]:+.2f}, owned by {owner}. "
        f"{len(raw['right_team'])} opponent(s) on the pitch. Score {score}."
    )


def parse_action(text: str) -> tuple[str | None, str | None]:
    found = _ANSWER.findall(text or "")
    if not found:
        return None, "no <answer>...</answer>"
    name = found[-1].strip().lower().replace("_", "-")
    name = ALIASES.get(name.replace("-", ""), ALIASES.get(name, name))
    if name not in ACTIONS:
        return None, f"not an action: {name[:40]!r} (use one of {', '.join(ACTIONS)})"
    return name, None


@dataclass
class FootballEnv:
    """``reset(seed)`` / ``step(response_text)`` over a gfootball academy scenario."""

    scenario: str = "empty_goal_close"
    frames_per_action: int = 4  # engine steps per model action: one step moves a player very little
    max_steps: int = 100
    format_penalty: float = -0.1
    render_frame: bool = False  # the engine's rendered frame instead of the minimap (slow, EGL)
    render_resolution_x: int = 320  # width of rendered frames (the engine keeps 16:9)
    _env: Any = field(init=False, default=None)
    steps: int = field(init=False, default=0)
    scored: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise LmmError(f"football: unknown scenario {self.scenario!r}; scenarios: {', '.join(SCENARIOS)}")
        try:
            import gfootball.env as football_env
        except ImportError:
            raise LmmError(INSTALL) from None
        self._env = football_env.create_environment(
            env_name=SCENARIOS[self.scenario], representation="raw", rewards="scoring",
            render=self.render_frame, number_of_left_players_agent_controls=1,
            other_config_options={"render_resolution_x": self.render_resolution_x,
                                  "render_resolution_y": self.render_resolution_x * 9 // 16},
        )  # fmt: skip

    def _observation(self, raw: dict[str, Any]) -> Observation:
        image = Image.fromarray(raw["frame"]) if self.render_frame else draw_minimap(raw)
        return Observation(text=describe(raw), images=[image])

    def reset(self, seed: int = 0) -> Observation:
        self._env.unwrapped._config.update({"game_engine_random_seed": int(seed) % 2**31})
        obs = self._env.reset()
        self.steps, self.scored = 0, False
        return self._observation(obs[0])

    def step(self, response_text: str) -> tuple[Observation, float, bool, dict[str, Any]]:
        name, error = parse_action(response_text)
        info: dict[str, Any] = {"actions": [name] if name else [], "format_error": error}
        action = ACTIONS[name] if name else ACTIONS["idle"]
        reward = self.format_penalty if error else 0.0
        done = False
        obs = None
        for _ in range(self.frames_per_action):
            obs, r, done, _ = self._env.step([action])
            self.steps += 1
            reward += float(r)
            self.scored = self.scored or float(r) > 0  # a bool, not numpy's bool_
            if done or self.steps >= self.max_steps:
                break
        done = done or self.steps >= self.max_steps
        info["success"] = self.scored
        return self._observation(obs[0]), reward, done, info

    def close(self) -> None:
        self._env.close()
