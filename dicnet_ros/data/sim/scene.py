"""Procedural street scenes built from PyBullet primitives, with a body-id -> class-id table.

Every body created here is registered with its class so the renderer can turn the segmentation buffer
into a label map. All randomness comes from one ``numpy.random.Generator`` so a scene is a pure function
of its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pybullet as p

from dicnet_ros.data.sim.classes import CLASS_ID

SKY, ROAD, MARK, SIDEWALK, BUILDING, WALL, VEG, POLE, SIGN, CAR, PED, TERRAIN = range(12)
assert CLASS_ID["terrain"] == TERRAIN and CLASS_ID["car"] == CAR

ROAD_TOP = 0.03  # road surface height; markings sit just above it (keeps z-fighting away)
MARK_TOP = 0.045


def _jitter(rng: np.random.Generator, rgb: tuple[float, float, float], amount: float = 0.08) -> list[float]:
    """Randomise a base colour (brightness and per-channel tint) so no class has a fixed colour."""
    gain = rng.uniform(0.75, 1.2)
    col = np.clip(np.asarray(rgb) * gain + rng.uniform(-amount, amount, 3), 0.02, 1.0)
    return [*col.tolist(), 1.0]


def _quat(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> list[float]:
    return list(p.getQuaternionFromEuler([roll, pitch, yaw]))


@dataclass
class StreetPath:
    """Centre line of the main road sampled every metre: position and heading as a function of arc length."""

    s: np.ndarray
    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, s_min: float = -15.0, s_max: float = 160.0) -> StreetPath:
        """Straight or curved (one or two bends) road; curvature radius 35..150 m."""
        s = np.arange(s_min, s_max + 1.0, 1.0)
        k = np.zeros_like(s)
        if rng.random() > 0.4:
            s0 = rng.uniform(0.0, 40.0)
            k0 = rng.choice([-1, 1]) / rng.uniform(35.0, 150.0)
            k[s > s0] = k0
            if rng.random() < 0.4:
                s1 = s0 + rng.uniform(20.0, 60.0)
                k[s > s1] = rng.choice([-1, 0, 1]) / rng.uniform(35.0, 150.0)
        heading = np.cumsum(k) - np.cumsum(k)[np.searchsorted(s, 0.0)]
        x = np.cumsum(np.cos(heading))
        y = np.cumsum(np.sin(heading))
        i0 = np.searchsorted(s, 0.0)
        return cls(s, x - x[i0], y - y[i0], heading)

    def pose(self, s: float, lateral: float = 0.0) -> tuple[float, float, float]:
        """World (x, y, heading) at arc length s and lateral offset (left positive)."""
        x = float(np.interp(s, self.s, self.x))
        y = float(np.interp(s, self.s, self.y))
        h = float(np.interp(s, self.s, self.heading))
        return x - lateral * math.sin(h), y + lateral * math.cos(h), h


@dataclass
class StreetLayout:
    """The sampled street parameters other steps (camera, anomalies) need."""

    path: StreetPath
    road_w: float
    lane_w: float
    n_lanes: int
    sidewalk_w: tuple[float, float]  # right, left (0 = none)
    sidewalk_h: float
    intersection: tuple[float, float] | None  # (s, width of the crossing road)
    extra: dict = field(default_factory=dict)

    def kerb(self, side: int) -> float:
        """Lateral offset of the road edge on a side (-1 right, +1 left)."""
        return side * self.road_w / 2

    def in_intersection(self, s: float, margin: float = 0.0) -> bool:
        if self.intersection is None:
            return False
        si, wi = self.intersection
        return abs(s - si) < wi / 2 + max(self.sidewalk_w) + margin


class SceneBuilder:
    """Creates bodies in one pybullet client and remembers which class each body id belongs to."""

    def __init__(self, client: int, rng: np.random.Generator) -> None:
        self.client = client
        self.rng = rng
        self.body_class: dict[int, int] = {}

    # -- primitives -------------------------------------------------------------------------------
    def _body(self, cls: int, vis: int, pos, orn) -> int:
        b = p.createMultiBody(
            baseVisualShapeIndex=vis, basePosition=pos, baseOrientation=orn, physicsClientId=self.client
        )
        self.body_class[b] = cls
        return b

    def box(self, cls: int, pos, half, rgba, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> int:
        vis = p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=rgba, physicsClientId=self.client)
        return self._body(cls, vis, pos, _quat(yaw, pitch, roll))

    def boxes(self, cls: int, positions: list, half, rgba, yaw: float = 0.0) -> None:
        """Many identical boxes in one call (windows, fence posts): pybullet's batch creation is cheaper."""
        if not positions:
            return
        vis = p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=rgba, physicsClientId=self.client)
        ids = p.createMultiBody(
            baseVisualShapeIndex=vis,
            basePosition=[0, 0, 0],
            baseOrientation=_quat(yaw),
            batchPositions=[list(map(float, q)) for q in positions],
            physicsClientId=self.client,
        )
        for b in np.atleast_1d(ids):
            self.body_class[int(b)] = cls

    def cylinder(self, cls: int, pos, radius: float, length: float, rgba, orn=None) -> int:
        vis = p.createVisualShape(
            p.GEOM_CYLINDER, radius=radius, length=length, rgbaColor=rgba, physicsClientId=self.client
        )
        return self._body(cls, vis, pos, orn if orn is not None else [0, 0, 0, 1])

    def sphere(self, cls: int, pos, radius: float, rgba) -> int:
        vis = p.createVisualShape(p.GEOM_SPHERE, radius=radius, rgbaColor=rgba, physicsClientId=self.client)
        return self._body(cls, vis, pos, [0, 0, 0, 1])

    # -- street furniture --------------------------------------------------------------------------
    def segment_box(
        self,
        cls,
        path: StreetPath,
        s0: float,
        s1: float,
        lat: float,
        width: float,
        z0: float,
        z1: float,
        rgba,
        step: float = 3.0,
    ) -> None:
        """A band along the path (road, sidewalk, line) as overlapping boxes that follow the curvature."""
        n = max(1, math.ceil((s1 - s0) / step))
        ds = (s1 - s0) / n
        for i in range(n):
            sm = s0 + (i + 0.5) * ds
            x, y, h = path.pose(sm, lat)
            self.box(cls, [x, y, (z0 + z1) / 2], [ds / 2 + 0.08, width / 2, (z1 - z0) / 2], rgba, yaw=h)

    def car(self, x: float, y: float, z: float, yaw: float) -> None:
        """Car or van: body, cabin (glass + roof) and four wheels."""
        rng = self.rng
        palette = [
            (0.8, 0.8, 0.8),
            (0.1, 0.1, 0.1),
            (0.6, 0.05, 0.05),
            (0.1, 0.2, 0.5),
            (0.5, 0.5, 0.5),
            (0.9, 0.9, 0.85),
            (0.2, 0.35, 0.2),
            (0.7, 0.6, 0.2),
        ]
        col = _jitter(rng, palette[rng.integers(len(palette))])
        van = rng.random() < 0.1
        length = rng.uniform(5.0, 7.5) if van else rng.uniform(3.8, 4.9)
        width = rng.uniform(1.9, 2.3) if van else rng.uniform(1.65, 1.95)
        clear, r_wheel = 0.3, 0.32
        body_h = rng.uniform(1.6, 2.4) if van else rng.uniform(0.55, 0.75)
        c, s = math.cos(yaw), math.sin(yaw)

        def world(fx: float, fy: float, fz: float) -> list[float]:
            return [x + fx * c - fy * s, y + fx * s + fy * c, z + fz]

        self.box(CAR, world(0, 0, clear + body_h / 2), [length / 2, width / 2, body_h / 2], col, yaw=yaw)
        if not van:
            cab_l = length * rng.uniform(0.45, 0.6)
            cab_h = rng.uniform(0.45, 0.6)
            off = rng.uniform(-0.25, 0.05) * length
            glass = _jitter(rng, (0.12, 0.15, 0.2), 0.03)
            self.box(
                CAR,
                world(off, 0, clear + body_h + cab_h / 2),
                [cab_l / 2, width / 2 - 0.08, cab_h / 2],
                glass,
                yaw=yaw,
            )
            self.box(
                CAR,
                world(off, 0, clear + body_h + cab_h + 0.03),
                [cab_l / 2 - 0.1, width / 2 - 0.1, 0.04],
                col,
                yaw=yaw,
            )
        else:
            self.box(
                CAR,
                world(length / 2 - 0.3, 0, clear + body_h * 0.72),
                [0.32, width / 2 - 0.05, body_h * 0.18],
                _jitter(rng, (0.12, 0.15, 0.2), 0.03),
                yaw=yaw,
            )
        tyre = [0.05, 0.05, 0.05, 1.0]
        wheel_orn = _quat(yaw, 0.0, math.pi / 2)
        for fx in (length * 0.33, -length * 0.33):
            for fy in (width / 2 - 0.12, -width / 2 + 0.12):
                self.cylinder(CAR, world(fx, fy, r_wheel), r_wheel, 0.22, tyre, orn=wheel_orn)

    def pedestrian(self, x: float, y: float, z: float, yaw: float) -> None:
        """A person from boxes and a sphere head; proportions and clothes randomised."""
        rng = self.rng
        k = rng.uniform(0.55, 0.7) if rng.random() < 0.15 else rng.uniform(0.85, 1.1)
        c, s = math.cos(yaw), math.sin(yaw)

        def world(fx: float, fy: float, fz: float) -> list[float]:
            return [x + fx * c - fy * s, y + fx * s + fy * c, z + fz]

        shirt = _jitter(rng, tuple(rng.uniform(0.05, 0.9, 3)), 0.05)
        trousers = _jitter(rng, tuple(rng.uniform(0.05, 0.5, 3)), 0.05)
        skin = _jitter(rng, (0.85, 0.65, 0.5) if rng.random() < 0.6 else (0.45, 0.3, 0.2), 0.05)
        stride = rng.uniform(-0.25, 0.25)
        leg_h = 0.85 * k
        for side, sw in ((1, stride), (-1, -stride)):
            self.box(
                PED,
                world(0, side * 0.1 * k, leg_h / 2),
                [0.07 * k, 0.07 * k, leg_h / 2],
                trousers,
                yaw=yaw,
                pitch=sw,
            )
        torso_h = 0.62 * k
        self.box(PED, world(0, 0, leg_h + torso_h / 2), [0.13 * k, 0.22 * k, torso_h / 2], shirt, yaw=yaw)
        for side in (1, -1):
            self.box(
                PED,
                world(0, side * 0.28 * k, leg_h + torso_h * 0.55),
                [0.05 * k, 0.05 * k, 0.3 * k],
                shirt,
                yaw=yaw,
                pitch=-stride,
            )
        self.sphere(PED, world(0, 0, leg_h + torso_h + 0.13 * k), 0.12 * k, skin)

    def tree(self, x: float, y: float, z: float) -> None:
        """Trunk cylinder + 1..3 crown spheres (all vegetation, like Cityscapes labels trunks)."""
        rng = self.rng
        h = rng.uniform(2.0, 4.5)
        self.cylinder(
            VEG, [x, y, z + h / 2], rng.uniform(0.1, 0.25), h, _jitter(rng, (0.35, 0.25, 0.15), 0.05)
        )
        green = (rng.uniform(0.1, 0.3), rng.uniform(0.3, 0.55), rng.uniform(0.05, 0.2))
        r = rng.uniform(1.2, 2.8)
        for _ in range(rng.integers(1, 4)):
            off = rng.uniform(-0.6, 0.6, 3) * r
            self.sphere(
                VEG,
                [x + off[0], y + off[1], z + h + r * 0.7 + abs(off[2])],
                r * rng.uniform(0.7, 1.0),
                _jitter(rng, green, 0.05),
            )

    def street_lamp(self, x: float, y: float, z: float, toward_road: float) -> None:
        rng = self.rng
        h = rng.uniform(4.5, 8.5)
        col = _jitter(rng, (0.45, 0.45, 0.45), 0.1)
        self.cylinder(POLE, [x, y, z + h / 2], rng.uniform(0.07, 0.14), h, col)
        if rng.random() < 0.7:
            arm = rng.uniform(0.8, 2.0)
            cx, cy = x + math.cos(toward_road) * arm / 2, y + math.sin(toward_road) * arm / 2
            self.box(POLE, [cx, cy, z + h - 0.05], [arm / 2, 0.05, 0.05], col, yaw=toward_road)

    def traffic_sign(self, x: float, y: float, z: float, facing: float) -> None:
        """Pole (pole class) + plate or traffic-light head (traffic_sign class), facing the camera."""
        rng = self.rng
        h = rng.uniform(2.0, 3.2)
        self.cylinder(POLE, [x, y, z + h / 2], 0.05, h, _jitter(rng, (0.55, 0.55, 0.55), 0.1))
        kind = rng.integers(4)
        colours = [(0.8, 0.1, 0.1), (0.1, 0.25, 0.7), (0.9, 0.75, 0.1), (0.9, 0.9, 0.9), (0.1, 0.5, 0.2)]
        col = _jitter(rng, colours[rng.integers(len(colours))], 0.05)
        size = rng.uniform(0.3, 0.45)
        top = z + h + size * 0.9
        if kind == 0:  # round sign: disc with its axis along the facing direction
            self.cylinder(SIGN, [x, y, top], size, 0.04, col, orn=_quat(facing, math.pi / 2))
        elif kind == 1:  # square / diamond plate
            self.box(
                SIGN, [x, y, top], [0.02, size, size], col, yaw=facing, roll=rng.choice([0.0, math.pi / 4])
            )
        elif kind == 2:  # wide rectangular (street name / direction) sign
            self.box(SIGN, [x, y, top], [0.02, size * 2.2, size * 0.6], col, yaw=facing)
        else:  # traffic light head
            self.box(
                SIGN, [x, y, top + 0.2], [0.15, 0.18, 0.5], _jitter(rng, (0.1, 0.1, 0.1), 0.03), yaw=facing
            )

    def building(self, path: StreetPath, s0: float, s1: float, lat0: float, side: int) -> None:
        """A box building between arc lengths s0..s1, front face at lateral lat0, with window rows."""
        rng = self.rng
        palette = [
            (0.75, 0.7, 0.6),
            (0.55, 0.3, 0.25),
            (0.6, 0.6, 0.6),
            (0.85, 0.85, 0.8),
            (0.4, 0.45, 0.5),
            (0.7, 0.55, 0.4),
            (0.3, 0.3, 0.32),
        ]
        col = _jitter(rng, palette[rng.integers(len(palette))])
        depth = rng.uniform(8.0, 16.0)
        height = float(np.exp(rng.uniform(math.log(4.0), math.log(32.0))))
        sm = (s0 + s1) / 2
        half_w = (s1 - s0) / 2
        lat = lat0 + side * depth / 2
        x, y, h = path.pose(sm, lat)
        self.box(BUILDING, [x, y, height / 2], [half_w, depth / 2, height / 2], col, yaw=h)
        if sm > 70 or rng.random() < 0.2:
            return
        # windows: thin dark boxes a little in front of the facade that faces the road
        fx, fy, _ = path.pose(sm, lat0 - side * 0.03)
        glass = _jitter(rng, (0.15, 0.18, 0.25) if rng.random() < 0.8 else (0.6, 0.65, 0.7), 0.05)
        win_w, win_h = rng.uniform(0.8, 1.6), rng.uniform(1.0, 1.7)
        dx, dz = rng.uniform(2.2, 3.5), rng.uniform(2.8, 3.6)
        n_cols = max(1, int((2 * half_w - 1.0) // dx))
        n_rows = max(0, int((height - 1.5) // dz))
        pts = []
        tan = (math.cos(h), math.sin(h))
        for r in range(n_rows):
            zc = 1.5 + dz * (r + 0.5)
            for cidx in range(n_cols):
                off = (cidx - (n_cols - 1) / 2) * dx
                pts.append([fx + tan[0] * off, fy + tan[1] * off, zc])
        self.boxes(BUILDING, pts[:400], [win_w / 2, 0.05, win_h / 2], glass, yaw=h)


def build_street(builder: SceneBuilder) -> StreetLayout:
    """Populate the client with a random street and return its layout (known classes only)."""
    rng = builder.rng
    path = StreetPath.random(rng)
    n_lanes = int(rng.choice([1, 2, 2, 2, 3, 4]))
    lane_w = rng.uniform(2.7, 3.8)
    shoulder = rng.uniform(0.0, 1.2)
    road_w = n_lanes * lane_w + 2 * shoulder
    sidewalk_w = tuple(rng.uniform(1.5, 4.5) if rng.random() < 0.9 else 0.0 for _ in range(2))
    sidewalk_h = rng.uniform(0.1, 0.2)
    inter = (rng.uniform(18.0, 55.0), rng.uniform(6.0, 12.0)) if rng.random() < 0.3 else None
    layout = StreetLayout(path, road_w, lane_w, n_lanes, sidewalk_w, sidewalk_h, inter)  # type: ignore[arg-type]
    s_lo, s_hi = path.s[0] + 2, path.s[-1] - 2

    # ground (terrain class): grass / dry earth
    grass = _jitter(rng, (0.25, 0.45, 0.15) if rng.random() < 0.7 else (0.45, 0.4, 0.25), 0.06)
    builder.box(TERRAIN, [0, 0, -0.05], [400, 400, 0.05], grass)

    # road and markings
    asphalt = _jitter(rng, (0.3, 0.3, 0.32), 0.04)
    builder.segment_box(ROAD, path, s_lo, s_hi, 0.0, road_w, ROAD_TOP - 0.06, ROAD_TOP, asphalt)
    white = _jitter(rng, (0.92, 0.92, 0.9), 0.04)
    mark_w = rng.uniform(0.1, 0.18)
    dash, gap = rng.uniform(2.0, 4.0), rng.uniform(3.0, 7.0)
    for i in range(1, n_lanes):
        lat = -road_w / 2 + shoulder + i * lane_w
        centre = n_lanes % 2 == 0 and i == n_lanes // 2
        col = _jitter(rng, (0.9, 0.75, 0.15), 0.04) if centre and rng.random() < 0.3 else white
        solid = centre and rng.random() < 0.4
        s = s_lo
        while s < s_hi:
            seg = (s_hi - s) if solid else dash
            if not layout.in_intersection(s + seg / 2):
                builder.segment_box(
                    MARK, path, s, min(s + seg, s_hi), lat, mark_w, ROAD_TOP - 0.01, MARK_TOP, col
                )
            s += seg + (0 if solid else gap)
            if solid:
                break
    if shoulder > 0.3:
        for side in (-1, 1):
            builder.segment_box(
                MARK,
                path,
                s_lo,
                s_hi,
                side * (road_w / 2 - shoulder),
                mark_w,
                ROAD_TOP - 0.01,
                MARK_TOP,
                white,
                step=4.0,
            )
    if inter is not None:
        si, wi = inter
        x, y, h = path.pose(si)
        builder.box(ROAD, [x, y, ROAD_TOP - 0.031], [wi / 2, 120, 0.03], asphalt, yaw=h)
        for k in range(-8, 9):  # zebra crossing before the junction
            xc, yc, _ = path.pose(si - wi / 2 - 2.5, k * road_w / 17)
            if abs(k * road_w / 17) < road_w / 2 - 0.3 and k % 2 == 0:
                builder.box(MARK, [xc, yc, MARK_TOP - 0.01], [1.5, 0.3, 0.01], white, yaw=h)

    # each side: sidewalk, kerbside furniture, then buildings or open land
    for idx, side in enumerate((-1, 1)):
        sw = sidewalk_w[idx]
        edge = side * road_w / 2
        concrete = _jitter(rng, (0.62, 0.6, 0.58) if rng.random() < 0.7 else (0.55, 0.45, 0.4), 0.05)
        spans = [(s_lo, s_hi)]
        if inter is not None:
            si, wi = inter
            spans = [(s_lo, si - wi / 2), (si + wi / 2, s_hi)]
        top = sidewalk_h if sw > 0 else ROAD_TOP
        for a, b in spans:
            if sw > 0:
                builder.segment_box(SIDEWALK, path, a, b, edge + side * sw / 2, sw, 0.0, sidewalk_h, concrete)
        outer = edge + side * sw
        # poles / lamps near the kerb
        s = rng.uniform(-5.0, 10.0)
        lamp_step = rng.uniform(12.0, 30.0)
        while s < 120:
            if not layout.in_intersection(s, 1.0):
                x, y, h = path.pose(s, edge + side * min(0.5, max(sw - 0.2, 0.2)))
                builder.street_lamp(x, y, top, h - side * math.pi / 2)
            s += lamp_step
        # traffic signs
        for _ in range(rng.integers(0, 4)):
            s = rng.uniform(5.0, 70.0)
            if layout.in_intersection(s, 1.0):
                continue
            x, y, h = path.pose(s, edge + side * min(0.6, max(sw - 0.3, 0.3)))
            builder.traffic_sign(x, y, top, h + math.pi + rng.uniform(-0.3, 0.3))
        # parked cars along the kerb
        if rng.random() < 0.5:
            s = rng.uniform(6.0, 14.0)
            while s < 90:
                if rng.random() < 0.5 and not layout.in_intersection(s, 3.0):
                    x, y, h = path.pose(s, edge - side * rng.uniform(1.0, 1.3))
                    builder.car(
                        x, y, ROAD_TOP, h + rng.uniform(-0.05, 0.05) + (math.pi if rng.random() < 0.3 else 0)
                    )
                s += rng.uniform(5.5, 9.0)
        # pedestrians on the sidewalk
        if sw > 0:
            for _ in range(rng.integers(0, 6)):
                s = rng.uniform(3.0, 50.0)
                if not layout.in_intersection(s):
                    x, y, h = path.pose(s, edge + side * rng.uniform(0.4, max(0.5, sw - 0.3)))
                    builder.pedestrian(
                        x, y, sidewalk_h, h + rng.choice([0.0, math.pi]) + rng.uniform(-0.4, 0.4)
                    )
        # beyond the sidewalk
        setback = rng.uniform(0.0, 4.0) if rng.random() < 0.5 else 0.0
        urban = rng.random() < 0.65
        if urban:
            for a, b in spans:
                s = a
                while s < min(b, 140):
                    w = rng.uniform(6.0, 22.0)
                    e = min(s + w, b)
                    if e - s > 3.0:
                        builder.building(path, s, e, outer + side * setback, side)
                    s = e + (rng.uniform(0.5, 4.0) if rng.random() < 0.4 else 0.0)
            if setback > 1.5 and rng.random() < 0.5:
                for _ in range(rng.integers(1, 5)):
                    s = rng.uniform(0.0, 60.0)
                    if not layout.in_intersection(s, 2.0):
                        x, y, _ = path.pose(s, outer + side * setback / 2)
                        builder.tree(x, y, 0.0)
        else:
            # open land: fence or wall, trees and hedges, distant buildings
            if rng.random() < 0.7:
                wall = rng.random() < 0.5
                col = _jitter(rng, (0.6, 0.55, 0.5) if wall else (0.35, 0.3, 0.25), 0.08)
                hgt = rng.uniform(0.8, 2.4)
                lat = outer + side * (setback + 0.1)
                for a, b in spans:
                    if wall:
                        builder.segment_box(WALL, path, a, b, lat, 0.25, 0.0, hgt, col, step=4.0)
                    else:
                        for z in (hgt * 0.45, hgt * 0.9):
                            builder.segment_box(
                                WALL, path, a, b, lat, 0.06, z - 0.05, z + 0.05, col, step=4.0
                            )
                        s = a
                        while s < min(b, 80):
                            x, y, h = path.pose(s, lat)
                            builder.box(WALL, [x, y, hgt / 2], [0.05, 0.05, hgt / 2], col, yaw=h)
                            s += 2.5
            for _ in range(rng.integers(2, 10)):
                s = rng.uniform(-5.0, 90.0)
                if not layout.in_intersection(s, 2.0):
                    x, y, _ = path.pose(s, outer + side * (setback + rng.uniform(1.5, 12.0)))
                    builder.tree(x, y, 0.0)
            if rng.random() < 0.4:
                for a, b in spans:
                    hedge = _jitter(rng, (0.15, 0.4, 0.12), 0.05)
                    builder.segment_box(
                        VEG,
                        path,
                        a,
                        min(b, 90),
                        outer + side * (setback + 0.8),
                        0.9,
                        0.0,
                        rng.uniform(0.6, 1.5),
                        hedge,
                        step=4.0,
                    )
            s = rng.uniform(10.0, 40.0)
            while s < 140:
                builder.building(
                    path, s, s + rng.uniform(8.0, 25.0), outer + side * rng.uniform(18.0, 40.0), side
                )
                s += rng.uniform(15.0, 40.0)

    # traffic in the lanes ahead (and oncoming on the left half)
    for _ in range(rng.integers(0, 4)):
        s = rng.uniform(14.0, 80.0)
        lane = int(rng.integers(n_lanes))
        lat = -road_w / 2 + shoulder + (lane + 0.5) * lane_w + rng.uniform(-0.3, 0.3)
        x, y, h = path.pose(s, lat)
        oncoming = lat > 0 and n_lanes > 1
        builder.car(x, y, ROAD_TOP, h + (math.pi if oncoming else 0.0) + rng.uniform(-0.05, 0.05))
    # people crossing at the junction
    if inter is not None and rng.random() < 0.6:
        for _ in range(rng.integers(1, 4)):
            si, _wi = inter
            x, y, h = path.pose(
                si - inter[1] / 2 - 2.5 + rng.uniform(-1, 1), rng.uniform(-road_w / 2, road_w / 2)
            )
            builder.pedestrian(x, y, ROAD_TOP, h + math.pi / 2 * rng.choice([-1, 1]))
    layout.extra["shoulder"] = shoulder
    return layout
