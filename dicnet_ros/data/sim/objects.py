"""Anomaly object catalogue and the ``--anomaly-set`` syntax.

Anomalies are PyBullet models that never appear in the train/val splits. They are grouped into
families so that held-out families can be generated for evaluation:

* ``urdf:A-B`` - ``pybullet_data/random_urdfs/A..B`` (procedural blobs, 0..999); ``urdf:N`` is one model,
  ``urdf`` alone is ``urdf:0-999``.
* ``toys``    - lego brick, jenga block, cube, sphere, soccer ball, mug, table, tray.
* ``animals`` - duck, teddy bear and the quadrupeds (laikago, a1, aliengo, minitaur, spirit40, vision60).
* ``robots``  - r2d2, kuka iiwa, franka panda, husky, xarm6.
* ``all``     - everything above (the default).

Tokens are comma-separated and combined as a union, e.g. ``urdf:500-999,animals``.

``OUTLIER_PROXIES`` are a separate, fixed set of objects for TRAINING ONLY (outlier exposure of the student):
a bicycle, a torus, a warehouse shelf pod, a two-joint robot arm and a gripper. None of them belongs to a
known class or to an anomaly family above (thin, pole-like models and anything human- or animal-like were
left out), so evaluating on the families stays evaluating on objects the model has never seen.
This module does not import pybullet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANOMALY_FAMILIES: tuple[str, ...] = ("urdf", "toys", "animals", "robots")
N_RANDOM_URDFS = 1000


@dataclass(frozen=True)
class AnomalyModel:
    """One loadable anomaly model: a URDF under pybullet_data and how it stands upright."""

    name: str
    family: str
    urdf: str  # relative to pybullet_data.getDataPath()
    upright: bool = False  # animals/robots keep roll = pitch = 0 most of the time


_TOYS: tuple[AnomalyModel, ...] = tuple(
    AnomalyModel(n, "toys", u)
    for n, u in (
        ("lego", "lego/lego.urdf"),
        ("jenga", "jenga/jenga.urdf"),
        ("cube", "cube.urdf"),
        ("sphere", "sphere2.urdf"),
        ("soccerball", "soccerball.urdf"),
        ("mug", "objects/mug.urdf"),
        ("table", "table/table.urdf"),
        ("tray", "tray/traybox.urdf"),
    )
)
_ANIMALS: tuple[AnomalyModel, ...] = tuple(
    AnomalyModel(n, "animals", u, upright=True)
    for n, u in (
        ("duck", "duck_vhacd.urdf"),
        ("teddy", "teddy_vhacd.urdf"),
        ("laikago", "laikago/laikago_toes_zup.urdf"),
        ("a1", "a1/a1.urdf"),
        ("aliengo", "aliengo/aliengo.urdf"),
        ("minitaur", "quadruped/minitaur.urdf"),
        ("spirit40", "quadruped/spirit40.urdf"),
        ("vision60", "quadruped/vision60.urdf"),
    )
)
_ROBOTS: tuple[AnomalyModel, ...] = tuple(
    AnomalyModel(n, "robots", u, upright=True)
    for n, u in (
        ("r2d2", "r2d2.urdf"),
        ("kuka_iiwa", "kuka_iiwa/model.urdf"),
        ("franka_panda", "franka_panda/panda.urdf"),
        ("husky", "husky/husky.urdf"),
        ("xarm6", "xarm/xarm6_robot.urdf"),
    )
)


#: Training-only outlier proxies (family "proxy"); a .obj / .stl path is wrapped into a URDF by the renderer.
OUTLIER_PROXIES: tuple[AnomalyModel, ...] = (
    AnomalyModel("bicycle", "proxy", "bicycle/bike.urdf", upright=True),
    AnomalyModel("torus", "proxy", "torus/torus_textured.obj"),
    AnomalyModel("shelf_pod", "proxy", "kiva_shelf/meshes/pod_lowres.stl", upright=True),
    AnomalyModel("two_joint_robot", "proxy", "TwoJointRobot_w_fixedJoints.urdf"),
    AnomalyModel("pr2_gripper", "proxy", "pr2_gripper.urdf"),
)


def _random_urdf(i: int) -> AnomalyModel:
    return AnomalyModel(f"urdf{i:03d}", "urdf", f"random_urdfs/{i:03d}/{i:03d}.urdf")


_URDF_RE = re.compile(r"^urdf(?::(\d+)(?:-(\d+))?)?$")


def parse_anomaly_set(spec: str) -> tuple[AnomalyModel, ...]:
    """Parse an ``--anomaly-set`` string into the models it selects (sorted, no duplicates).

    Raises ValueError with the accepted syntax when a token is not understood, so the CLI can show it.
    """
    tokens = [t.strip().lower() for t in (spec or "").split(",") if t.strip()]
    if not tokens:
        raise ValueError("empty anomaly set; " + ANOMALY_SET_HELP)
    chosen: dict[str, AnomalyModel] = {}
    for tok in tokens:
        models: tuple[AnomalyModel, ...]
        if tok == "all":
            models = tuple(_random_urdf(i) for i in range(N_RANDOM_URDFS)) + _TOYS + _ANIMALS + _ROBOTS
        elif tok == "toys":
            models = _TOYS
        elif tok == "animals":
            models = _ANIMALS
        elif tok == "robots":
            models = _ROBOTS
        elif m := _URDF_RE.match(tok):
            lo = int(m.group(1)) if m.group(1) is not None else 0
            hi = int(m.group(2)) if m.group(2) is not None else (lo if m.group(1) is not None else 999)
            if not (0 <= lo <= hi < N_RANDOM_URDFS):
                raise ValueError(f"bad range in '{tok}': need 0 <= A <= B <= {N_RANDOM_URDFS - 1}")
            models = tuple(_random_urdf(i) for i in range(lo, hi + 1))
        else:
            raise ValueError(f"unknown anomaly set token '{tok}'; " + ANOMALY_SET_HELP)
        for mdl in models:
            chosen[mdl.name] = mdl
    return tuple(sorted(chosen.values(), key=lambda m: (m.family, m.name)))


def group_by_family(models: tuple[AnomalyModel, ...]) -> dict[str, tuple[AnomalyModel, ...]]:
    """Group models by family; sampling picks a family first so 1000 blobs do not drown 8 toys."""
    out: dict[str, list[AnomalyModel]] = {}
    for mdl in models:
        out.setdefault(mdl.family, []).append(mdl)
    return {fam: tuple(out[fam]) for fam in sorted(out)}


ANOMALY_SET_HELP = (
    "valid tokens (comma-separated union): all, toys, animals, robots, urdf (=urdf:0-999), "
    "urdf:A-B (random_urdfs A..B, 0..999), urdf:N"
)
